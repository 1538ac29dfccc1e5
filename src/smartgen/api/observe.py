"""What the API's edge (`api.edge.HttpEdge`) records of each HTTP answer: new request ids,
and each answer counted and timed by route template, method and status
(`metrics.catalog`)."""

from __future__ import annotations

import os
from typing import Any

from smartgen.metrics import catalog

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


class RequestMetrics:
    """Counts and times answers; the metric children are looked up once per label set,
    not through prometheus_client's locked `labels()` on every request."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    def observe(self, scope: dict[str, Any], status: int, seconds: float) -> None:
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
