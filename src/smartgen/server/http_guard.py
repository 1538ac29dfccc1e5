"""uvicorn's HTTP protocol with the limits it lacks: a request head of bounded size that must
arrive in time, and a request body that must arrive in time.

uvicorn (with httptools, as `uvicorn[standard]` installs it) reads a request head of any
size into memory, and waits forever for a client that opened a connection and sends
nothing, sends its head one line a second, or its body one byte a second: each holds a
connection, a parser and buffers for as long as it likes. uvicorn's own settings cover the
rest (`timeout_keep_alive` for idle kept-alive connections, `limit_concurrency` for the
number of connections and tasks; `http.py` sets both). This subclass of uvicorn's
`HttpToolsProtocol` adds, per request:

* the head (request line and headers) at most HTTP_MAX_HEADER_BYTES, as parsed, or as read
  while it does not end: past it, 431 and the connection is closed (at most one read,
  256 KiB, more was held);
* the head complete within HTTP_HEADER_TIMEOUT_SECONDS of the connection's opening or of
  the request's first byte: else 408 (or nothing, when nothing came) and closed;
* the body complete within HTTP_BODY_TIMEOUT_SECONDS of the head: else 408 and closed.

It relies on uvicorn's internals (`on_message_begin`, `on_headers_complete`,
`on_message_complete`, `cycle`, `transport`), pinned by uvicorn's version range in
pyproject.toml; `tests/test_http_limits.py` drives a real `smartgen api` with raw sockets.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
# A timer that fires this late found the event loop busy, not the client slow: what the
# client sent may be waiting unread (uvloop runs due timers before it polls sockets), so
# it is given this long again, as often as the loop stays that busy, before the verdict.
LATE_SECONDS = 0.25


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 32 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0


def guarded_protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol class bound to these limits (uvicorn's `http=`)."""

    class Guarded(GuardedHttpToolsProtocol):
        LIMITS = limits

    return Guarded


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    LIMITS = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0  # read while a head is incomplete (what it may hold back)
        self._head_size = 0  # the current head's request line and headers, as parsed
        self._refused = False  # answered and closing: the parser's callbacks are ignored
        self._head_started = False  # a byte of the current request came
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --- connection -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head that does not end (one endless header value) is counted in bytes read: the
        # parser keeps a header to itself until it is complete.
        if self._in_head and self._head_bytes > self.LIMITS.max_header_bytes:
            self._too_large()

    # --- parser callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._head_size = 0
        self._head_started = True
        if not self._in_head:  # the next request on a kept-alive connection
            self._head_bytes = 0
            self._start_head()

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.LIMITS.max_header_bytes:
            self._too_large()
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._head_started = False
        self._cancel("_head_timer")
        upgrade = self.parser.should_upgrade() and self._should_upgrade()
        limit = self.limit_concurrency
        if limit is not None and (
            len(self.connections) >= limit or (not upgrade and len(self.tasks) >= limit)
        ):
            # uvicorn's limit_concurrency answers plain requests in plain text, and lets a
            # WebSocket through (to hold its connection for as long as it lives): both get
            # the API's JSON error here, with a hint when to come back.
            self._refuse(
                503, "server_busy", "Too many connections; try again shortly", retry_after=1
            )
            return
        super().on_headers_complete()
        if upgrade:
            return  # a WebSocket: its own protocol takes the connection over
        if self._has_body():
            self._body_timer = self._arm(self.LIMITS.body_timeout, self._body_too_slow)

    def handle_websocket_upgrade(self) -> None:
        if not self._refused:  # an upgrade whose head was refused is not carried out
            super().handle_websocket_upgrade()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._cancel("_body_timer")
        super().on_message_complete()

    # --- the guards -------------------------------------------------------------------
    def _start_head(self) -> None:
        self._in_head = True
        if self._head_timer is None:
            self._head_timer = self._arm(self.LIMITS.header_timeout, self._head_too_slow)

    def _arm(self, delay: float, verdict: Any) -> asyncio.TimerHandle:
        """Call `verdict` after `delay` s; a timer that fires late (the loop was busy) is
        armed again for LATE_SECONDS, until one fires on time: only then has the loop
        surely read what the client sent meanwhile."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay

        def fire() -> None:
            if loop.time() - due > LATE_SECONDS:
                self._rearm(verdict, self._arm(LATE_SECONDS, verdict))
            else:
                verdict()

        return loop.call_at(due, fire)

    def _rearm(self, verdict: Any, timer: asyncio.TimerHandle) -> None:
        if verdict == self._head_too_slow:
            self._head_timer = timer
        else:
            self._body_timer = timer

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if not self._head_started:
            self.transport.close()  # nothing came: nothing to answer
            return
        seconds = f"{self.LIMITS.header_timeout:g}"
        self._refuse(408, "request_timeout", f"The request headers took longer than {seconds} s")

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self.transport.close()
            return
        seconds = f"{self.LIMITS.body_timeout:g}"
        self._refuse(408, "request_timeout", f"The request body took longer than {seconds} s")

    def _too_large(self) -> None:
        if not self._refused and not self.transport.is_closing():
            limit = self.LIMITS.max_header_bytes
            message = f"The request line and headers are larger than {limit} bytes"
            self._refuse(431, "headers_too_large", message)

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"", b"0")
            if name == b"transfer-encoding":
                return True
        return False

    def _refuse(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        """Answer `status` with the usual JSON error body and close the connection."""
        self._refused = True
        self._stop_timers()
        body = json.dumps({"error": code, "message": message}).encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        if retry_after is not None:
            head.append(b"retry-after: %d\r\n" % retry_after)
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _stop_timers(self) -> None:
        self._cancel("_head_timer")
        self._cancel("_body_timer")
