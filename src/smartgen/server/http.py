"""uvicorn for the API: one configuration, and a stop on SIGTERM/SIGINT that exits 0."""

from __future__ import annotations

import signal
from typing import Any

import uvicorn

from smartgen.config import Settings
from smartgen.server.compact_websocket import CompactWebSocketProtocol
from smartgen.server.http_guard import HttpLimits, guarded_protocol


def uvicorn_config(app: Any, settings: Settings, **where: Any) -> uvicorn.Config:
    """The API's uvicorn settings; `where` says where it listens (host/port, or nothing
    when it is handed sockets). With LOG_FORMAT=json uvicorn keeps its hands off logging,
    so that its lines go through smartgen's JSON handler too."""
    if settings.log_format == "json":
        where.setdefault("log_config", None)
    limits = HttpLimits(
        max_header_bytes=settings.http_max_header_bytes,
        header_timeout=settings.http_header_timeout_seconds,
        body_timeout=settings.http_body_timeout_seconds,
    )
    return uvicorn.Config(
        app,
        **where,
        lifespan="on",
        log_level=settings.log_level.lower(),
        access_log=settings.log_level.lower() == "debug",
        timeout_graceful_shutdown=10,
        # X-Forwarded-For is read by the app, from TRUSTED_PROXIES only (api/deps.py).
        proxy_headers=False,
        server_header=False,  # no "Server: uvicorn" on every answer
        # What uvicorn has (see http_guard.py for what it lacks): an idle kept-alive
        # connection's end, connections and requests at once (503 past it), the head's
        # size when h11 parses.
        http=guarded_protocol(limits),
        timeout_keep_alive=settings.http_keepalive_timeout_seconds,
        limit_concurrency=settings.http_max_connections,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        # Engine.IO pings every socket itself (and closes one that stops answering), so
        # uvicorn's own websocket pings only doubled the work: holding 3,000 idle sockets
        # took 5.28 % of a core with them and 4.35 % without (bench/memory.py, HISTORY).
        ws_ping_interval=None,
        ws=websocket_protocol(settings),
    )


def websocket_protocol(settings: Settings) -> Any:
    """uvicorn's `ws`: what each open websocket keeps, smaller (compact_websocket.py), or
    "auto", uvicorn's own pick: the same protocol in its stock form."""
    return CompactWebSocketProtocol if settings.socketio_compact_connections else "auto"


def exit_quietly_after_a_graceful_stop() -> None:
    """uvicorn finishes in-flight requests on SIGTERM/SIGINT, then re-raises the signal to
    whatever handler was installed before it started, so that a default handler ends the
    process by the signal (a supervisor would report a crash). Installed first, this
    handler takes that re-raised signal and does nothing: the process exits normally."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
