"""The outermost ASGI wrapper of the API: the pure header and bookkeeping work every HTTP
answer needs, done in one place with one `send` wrapper.

* `X-Request-ID` on every answer (the caller's when it is sane, else a new one); the
  request's log lines and error bodies name it (`kit.logcontext`);
* each answer counted and timed by route template, method and status (`api.observe`);
* security headers: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, no
  framing (and `frame-ancestors 'none'` on HTML without a policy of its own), and
  `Cache-Control: no-store` on answers to authenticated requests that set no caching
  rule themselves: a shared cache never keeps one user's data;
* the last stop for an exception: Starlette answers an unexpected error with the app's
  500 handler and then raises it again for the server to log (a traceback per request).
  Here it ends: already answered and logged, it is dropped; raised before any answer
  (from a middleware), it is answered 500 and logged in one line.

These were three nested middlewares, each with its own `send` closure and coroutine frame
on every message of every request; merged, they cost one (bench/HISTORY.md, issue 19).
Plain ASGI rather than Starlette's `BaseHTTPMiddleware`, which runs every request in a
task group of its own.
"""

from __future__ import annotations

import time
from typing import Any

from smartgen.api.handlers import log_unexpected
from smartgen.api.middleware import error_start
from smartgen.api.observe import RequestMetrics, new_request_id
from smartgen.kit import logcontext

REQUEST_ID = b"x-request-id"
AUTHORIZATION = b"authorization"
# On every answer; the framing rule only matters for HTML (the docs pages).
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
FRAME_ANCESTORS = (b"content-security-policy", b"frame-ancestors 'none'")
NO_STORE = (b"cache-control", b"no-store")


def _with_headers(
    headers: list[tuple[bytes, bytes]], authenticated: bool, request_id: tuple[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    names = {name.lower() for name, _ in headers}
    headers += [h for h in SECURITY_HEADERS if h[0] not in names]
    if FRAME_ANCESTORS[0] not in names:
        content_type = next((v for n, v in headers if n.lower() == b"content-type"), b"")
        if content_type.startswith(b"text/html"):
            headers.append(FRAME_ANCESTORS)
    if authenticated and NO_STORE[0] not in names:
        headers.append(NO_STORE)
    headers.append(request_id)
    return headers


class HttpEdge:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.metrics = RequestMetrics()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given: str | None = None
        seen_id = False
        authenticated = b"token=" in scope.get("query_string", b"")
        for name, value in scope["headers"]:
            if name == REQUEST_ID and not seen_id:
                seen_id = True
                given = logcontext.sane_request_id(value)
            elif name == AUTHORIZATION:
                authenticated = True
        request_id = given or new_request_id()
        header = (REQUEST_ID, request_id.encode())
        token = logcontext.request_id.set(request_id)
        user_token = logcontext.user_id.set(None)
        status = 500
        answered = False

        async def edge_send(message: dict[str, Any]) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                answered = True
                status = int(message["status"])
                message["headers"] = _with_headers(
                    list(message.get("headers", ())), authenticated, header
                )
            await send(message)

        try:
            await self.app(scope, receive, edge_send)
        except Exception as exc:
            if not answered:  # else the app's handler answered 500 and logged it
                log_unexpected(scope.get("method", "?"), scope.get("path", "?"), exc)
                start, body = error_start(500, "internal_error", "Internal server error")
                await edge_send(start)
                await edge_send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe(scope, status, time.perf_counter() - started)
            logcontext.user_id.reset(user_token)
            logcontext.request_id.reset(token)
