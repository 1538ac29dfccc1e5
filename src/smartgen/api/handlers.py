"""One error shape for every answer: `AppError`s, validation errors, Starlette's HTTP errors
and anything unexpected, rendered as `{"error", "message", "details"?, "requestId"}` (the
request's id, as in its `X-Request-ID` header and its log lines)."""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from smartgen.errors import AppError
from smartgen.kit import logcontext

log = logging.getLogger("smartgen.api")
UNPARSEABLE_BODY = "There was an error parsing the body"  # FastAPI's words


def error_json(body: dict[str, Any], status_code: int, **kw: Any) -> JSONResponse:
    """An error answer: `body` plus the request's id."""
    request_id = logcontext.request_id.get()
    if request_id:
        body["requestId"] = request_id
    return JSONResponse(body, status_code=status_code, **kw)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_json(
            {"error": "invalid_json", "message": "Request body is not valid JSON"}, status_code=400
        )
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
        return error_json(
            {"error": "invalid_json", "message": "Request body must be a JSON object"},
            status_code=400,
        )
    details = []
    for e in errors:
        message = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            message = "unknown field"
        elif e.get("type") == "missing":
            message = "required"
        elif e.get("type") == "value_error":  # our validators' own words, not pydantic's prefix
            message = str((e.get("ctx") or {}).get("error") or message)
        details.append({"field": _field(e.get("loc", ())), "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return error_json(
        {"error": "validation_error", "message": f"Invalid request: {summary}", "details": details},
        status_code=422,
    )


def _allowed_methods(request: Request) -> set[str]:
    """Every method the app serves at this path, from its OpenAPI description. A path
    the description names literally is that path only: its routes are never a template's
    value (`/contents/export` is not a `{contentId}`: the content routes' convertor
    refuses it)."""
    app: FastAPI = request.app
    methods: set[str] = set()
    paths = app.openapi().get("paths", {})
    literal = paths.get(request.url.path)
    templates = {request.url.path: literal} if literal else paths
    for template, operations in templates.items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path):
            methods.update(m.upper() for m in operations)
    if "GET" in methods:
        methods.add("HEAD")
    return methods


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError) -> JSONResponse:
        if exc.status_code >= 500:  # the line a user's report (its requestId) leads to
            log.warning(
                "%s %s answered %d %s: %s",
                request.method,
                request.url.path,
                exc.status_code,
                exc.code,
                exc.message,
            )
        return error_json(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 400 and exc.detail == UNPARSEABLE_BODY:
            # Bytes FastAPI's JSON decoding gave up on (invalid UTF-8, nesting deeper than
            # the parser's recursion, an integer of thousands of digits): still not JSON.
            return error_json(
                {
                    "error": "invalid_json",
                    "message": "Request body is not valid JSON (invalid UTF-8, nesting too "
                    "deep or a number too long)",
                },
                status_code=400,
            )
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; list them all.
            methods = sorted(_allowed_methods(request))
            if methods:
                headers["Allow"] = ", ".join(methods)
        return error_json(
            {"error": codes.get(exc.status_code, "http_error"), "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=headers or None,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log_unexpected(request.method, request.url.path, exc)
        return error_json(
            {"error": "internal_error", "message": "Internal server error"}, status_code=500
        )


def log_unexpected(method: str, path: str, exc: BaseException) -> None:
    """One line for an unexpected error: where it was raised, not the whole traceback
    (which goes to the debug level). A handled path never writes a traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    text = str(exc).replace("\n", " ")[:200]
    log.error("%s %s: unexpected %s%s: %s", method, path[:200], type(exc).__name__, where, text)
    log.debug("traceback of the unexpected error", exc_info=exc)
