"""One error hierarchy, rendered by one handler as `{"error": code, "message": text}`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """The one error shape every endpoint answers with."""

    error: str
    message: str
    details: list[FieldError] | None = None
    requestId: str = Field(
        description="The request's id, as in its X-Request-ID header and the server's logs"
    )


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all with `ErrorBody`."""
    text = {
        400: "The body is not JSON",
        401: "Missing, malformed, expired or invalid token",
        402: "A monthly budget would be exceeded (budget_exceeded)",
        403: "Refused: an API key without the scope (insufficient_scope), or a browser check",
        404: "Not found (or not yours)",
        409: "Conflict with the current state",
        413: "Body too large",
        415: "Body is not JSON",
        422: "Invalid fields or parameters",
        429: "Rate limited; see Retry-After",
        503: "A backing service (queue, database) is unavailable",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


class AppError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details is not None:
            out["details"] = self.details
        return out


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kw)


class PaymentRequired(AppError):
    status_code = 402
    code = "budget_exceeded"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class ValidationFailed(AppError):
    status_code = 422
    code = "validation_error"


class TooManyRequests(AppError):
    status_code = 429
    code = "rate_limited"


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"


class StoreUnavailable(ServiceUnavailable):
    """The database did not answer; raised by repositories."""

    code = "store_unavailable"


class QueueUnavailable(ServiceUnavailable):
    """The job queue (Redis) did not answer."""

    code = "queue_unavailable"

    def __init__(
        self, message: str = "The job queue (Redis) is unavailable; try again shortly", **kw: Any
    ) -> None:
        super().__init__(message, **kw)
