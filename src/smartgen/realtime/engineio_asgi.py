"""What python-engineio keeps per connection, smaller: its ASGI request translation
(`engineio.async_drivers.asgi.translate_request`) and its socket's queue
(`AsyncServer.create_queue`). SOCKETIO_COMPACT_CONNECTIONS=false keeps the stock ones.

Engine.IO turns each request into a WSGI-style `environ`, and python-socketio keeps that
dict for as long as the connection lives. The stock translation defines its `wsgi.input`
class inside the function, so every environ held a class of its own (about 2.5 KB:
the type, its methods and their closure). `translate_request` here is the same code with
the class defined once; the environ it builds has the same keys and values. The socket's
queue is `kit.compact_queue.CompactQueue`: asyncio's Queue with lists for deques.
"""

from __future__ import annotations

import sys
from typing import Any

import engineio
import socketio

from smartgen.kit import compact_queue


class AwaitablePayload:
    """`wsgi.input` of an ASGI request: its body, read on demand."""

    __slots__ = ("event", "first_type", "payload", "receive")

    def __init__(self, event: dict[str, Any], receive: Any) -> None:
        self.event = event
        self.payload: bytes | None = None
        self.receive = receive
        self.first_type = event["type"]

    async def read(self, length: int | None = None) -> bytes | None:
        if self.payload is None and self.first_type == "http.request":
            # read payload from http request
            self.payload = self.event.get("body") or b""
            while self.event.get("more_body"):
                self.event = await self.receive()
                if self.event["type"] == "http.request" and (
                    length is None or len(self.payload) < length
                ):
                    self.payload += self.event.get("body") or b""
        payload = self.payload
        if length is None:
            self.payload = b""
            return payload
        self.payload = payload[length:]  # type: ignore[index]
        return payload[:length]  # type: ignore[index]


async def translate_request(scope: dict[str, Any], receive: Any, send: Any) -> dict[str, Any]:
    """python-engineio's ASGI `translate_request` (4.x), its payload class shared."""
    event = await receive()
    if event["type"] not in ("http.request", "websocket.connect"):
        return {}

    raw_uri = scope["path"]
    query_string = ""
    if scope.get("query_string"):
        try:
            query_string = scope["query_string"].decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            raw_uri += "?" + query_string
    environ: dict[str, Any] = {
        "wsgi.input": AwaitablePayload(event, receive),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.async": True,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "SERVER_SOFTWARE": "asgi",
        "REQUEST_METHOD": scope.get("method", "GET"),
        "PATH_INFO": scope["path"],
        "QUERY_STRING": query_string,
        "RAW_URI": raw_uri,
        "SCRIPT_NAME": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "SERVER_NAME": "asgi",
        "SERVER_PORT": "0",
        "asgi.receive": receive,
        "asgi.send": send,
        "asgi.scope": scope,
    }
    for raw_name, raw_value in scope["headers"]:
        try:
            name = raw_name.upper().decode("utf-8")
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            continue  # skip a header that cannot be decoded
        if name == "CONTENT-TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        if name == "CONTENT-LENGTH":
            environ["CONTENT_LENGTH"] = value
            continue
        key = "HTTP_" + name.replace("-", "_")
        if key in environ:
            value = f"{environ[key]},{value}"
        environ[key] = value
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    return environ


def compact_engineio_class(base: type[engineio.AsyncServer]) -> type[engineio.AsyncServer]:
    """`base` with the shared payload class and compact socket queues."""

    class CompactEngineIO(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.async_mode == "asgi":
                server: Any = self  # engineio's driver table (`_async`) is private
                server._async = {**server._async, "translate_request": translate_request}

        def create_queue(self, *args: Any, **kwargs: Any) -> Any:
            if args or kwargs:  # a bounded queue: asyncio's own
                return super().create_queue(*args, **kwargs)
            return compact_queue.queue()

    CompactEngineIO.__name__ = CompactEngineIO.__qualname__ = f"Compact{base.__name__}"
    return CompactEngineIO


def compact_sio_class(base: type[socketio.AsyncServer]) -> type[socketio.AsyncServer]:
    """`base` (a python-socketio server class) on the compact Engine.IO server."""

    class CompactSocketIO(base):  # type: ignore[misc]
        def _engineio_server_class(self) -> type[engineio.AsyncServer]:
            return compact_engineio_class(super()._engineio_server_class())

    CompactSocketIO.__name__ = CompactSocketIO.__qualname__ = f"Compact{base.__name__}"
    return CompactSocketIO
