"""New Engine.IO sessions per client address, counted before python-socketio sees them.

A Socket.IO session starts with an Engine.IO handshake that needs no credentials (the token
comes with the Socket.IO `CONNECT` that follows), and each session holds memory and a ping
task until it connects or `SOCKETIO_CONNECT_TIMEOUT_SECONDS` closes it. One address opening
sessions in a loop could keep thousands alive at once; here each new session (a request to
the Socket.IO path without a `sid`) counts against `SOCKETIO_IP_SESSION_RATE_LIMIT` per
`SOCKETIO_IP_SESSION_RATE_WINDOW_SECONDS`, in the same Redis counters as the API's other
per-address limits. Over it: 429 `rate_limited` with `Retry-After` (a websocket opened
without polling first gets the same answer instead of its upgrade). Requests of a session
that exists (`sid=…`) are not counted. Without Redis the handshake is let through:
Socket.IO cannot deliver events without Redis anyway, and refusing every browser would not
protect anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from smartgen.api.middleware import error_start
from smartgen.api.ratelimit import Limit, RateLimiter
from smartgen.errors import TooManyRequests
from smartgen.kit.client_address import ClientAddresses

Asgi = Callable[..., Any]


class SocketSessionLimit:
    """ASGI wrapper in front of python-socketio's app (`socketio_path`). `services()` gives
    the limiter and the address rules once the API has started (None before)."""

    def __init__(
        self,
        app: Asgi,
        *,
        path: str,
        limit: int,
        window_seconds: float,
        services: Callable[[], tuple[RateLimiter, ClientAddresses] | None],
    ) -> None:
        self.app = app
        self.bare = "/" + path.strip("/")
        self.prefix = self.bare + "/"
        self.limit = limit
        self.window_seconds = window_seconds
        self.services = services

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (
            self.limit <= 0
            or not (path.startswith(self.prefix) or path == self.bare)
            or scope["type"] not in ("http", "websocket")
            or _has_sid(scope.get("query_string", b""))
        ):
            await self.app(scope, receive, send)
            return
        found = self.services()
        if found is None:
            await self.app(scope, receive, send)
            return
        limiter, addresses = found
        client = scope.get("client")
        peer = client[0] if client else None
        forwarded = [
            value.decode("latin-1")
            for name, value in scope.get("headers", [])
            if name == b"x-forwarded-for"
        ]
        key = addresses.key(peer, forwarded)
        try:
            await limiter.hit_all(
                [Limit("socket-session-ip", key, self.limit, self.window_seconds)],
                fail_open=True,
            )
        except TooManyRequests as refused:
            await _refuse(scope, send, refused)
            return
        await self.app(scope, receive, send)


def _has_sid(query: bytes) -> bool:
    if b"sid=" not in query:
        return False
    return any(name == "sid" and value for name, value in parse_qsl(query.decode("latin-1")))


async def _refuse(scope: dict[str, Any], send: Any, refused: TooManyRequests) -> None:
    start, body = error_start(429, refused.code, refused.message)
    headers = [
        *start["headers"],
        *((k.lower().encode(), v.encode()) for k, v in (refused.headers or {}).items()),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": 429, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
