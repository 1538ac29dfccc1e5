"""uvicorn's websocket protocol (`websockets-sansio`, what its `ws="auto"` picks), keeping
less per connection. SOCKETIO_COMPACT_CONNECTIONS=false keeps the stock one.

Each open websocket is one protocol object for as long as it lives. The stock one keeps
an `asyncio.Queue` and an `asyncio.Event` (about 4 KB of empty deques between them), and
the handshake's request and response (their header lists and dicts) after the handshake
is over. This one takes the compact queue and event of `kit.compact_queue` and lets go of
the handshake once it is answered; frames, pings, flow control and closing are uvicorn's
own code, untouched.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from smartgen.kit import compact_queue


class CompactWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol with compact per-connection state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = compact_queue.queue()
        self.writable = compact_queue.event()
        self.writable.set()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # Read only while the handshake is answered (accept or reject); from here on
            # they would only hold the request's and response's headers.
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]
