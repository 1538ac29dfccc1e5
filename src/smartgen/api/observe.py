"""The outermost ASGI middleware of the API: every HTTP answer carries `X-Request-ID` (the
caller's when it is sane, else a new one), the request's log lines and error bodies name
it (`kit.logcontext`), and each answer is counted and timed by route template, method and
status (`metrics.catalog`).

Plain ASGI rather than Starlette's `BaseHTTPMiddleware`, which runs every request in a
task group of its own; the metric children are looked up once per label set, not through
prometheus_client's locked `labels()` on every request.
"""

from __future__ import annotations

import os
import time
from typing import Any

from smartgen.kit import logcontext
from smartgen.metrics import catalog

HEADER = b"x-request-id"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SOCKETIO_ROUTE = "/socket.io/"
OTHER_ROUTE = "other"  # no route matched (404s): one label, whatever the path


def new_request_id() -> str:
    return os.urandom(12).hex()


def _route(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if scope["path"].startswith("/socket.io"):
        return SOCKETIO_ROUTE
    return OTHER_ROUTE


class RequestContext:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = None
        for name, value in scope["headers"]:
            if name == HEADER:
                given = logcontext.sane_request_id(value)
                break
        request_id = given or new_request_id()
        header = (HEADER, request_id.encode())
        token = logcontext.request_id.set(request_id)
        user_token = logcontext.user_id.set(None)
        status = 500

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._observe(scope, status, time.perf_counter() - started)
            logcontext.user_id.reset(user_token)
            logcontext.request_id.reset(token)

    def _observe(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        route = _route(scope)
        method = scope["method"] if scope["method"] in METHODS else "other"
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = catalog.HTTP_REQUESTS.labels(route, method, str(status))
            self._counters[(route, method, status)] = counter
        counter.inc()
        timer = self._timers.get((route, method))
        if timer is None:
            timer = catalog.HTTP_DURATION.labels(route, method)
            self._timers[(route, method)] = timer
        timer.observe(seconds)
