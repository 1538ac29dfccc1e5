"""ASGI middleware in front of the API's routes (inside Socket.IO's dispatch): body size and
JSON content type, checked before any route; HEAD served wherever GET is. The headers and
errors of every answer are `api.edge`'s."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from smartgen.api.direct import DirectRoute
from smartgen.kit import logcontext


def error_start(status: int, code: str, message: str) -> tuple[dict[str, Any], bytes]:
    fields = {"error": code, "message": message}
    request_id = logcontext.request_id.get()
    if request_id:
        fields["requestId"] = request_id
    body = json.dumps(fields).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    return start, body


class RequestLimits:
    """413 for bodies over `max_body_bytes` (declared or streamed), 415 for a body that is
    not declared JSON on POST/PUT/PATCH; HEAD goes through `HeadAsGet` (one middleware in
    front of the routes instead of two, for the requests that are neither). `uploads`:
    paths that take files (a multipart form, CSV, JSON Lines) up to their own size."""

    def __init__(
        self,
        app: Any,
        *,
        max_body_bytes: int,
        uploads: dict[str, int] | None = None,
        direct: dict[tuple[str, str], DirectRoute] | None = None,
    ) -> None:
        self.app = app
        self.head = HeadAsGet(app)
        self.max_body_bytes = max_body_bytes
        self.uploads = uploads or {}
        self.direct = direct or {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method not in ("POST", "PUT", "PATCH"):
            await (self.head if method == "HEAD" else self.app)(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        limit = self.uploads.get(scope.get("path", ""))
        upload = limit is not None
        limit = limit if upload and limit is not None else self.max_body_bytes
        length_text = headers.get(b"content-length", b"").decode("latin-1").strip()
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        length = int(length_text) if length_text.isdigit() else None
        if length is not None and length > limit:
            await self._reject(send, 413, "payload_too_large", self._too_large(limit))
            return
        has_body = chunked or (length or 0) > 0
        content_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip()
        if has_body and not (_is_json(content_type) or (upload and _is_file(content_type))):
            await self._reject(
                send,
                415,
                "unsupported_media_type",
                "Request body must be JSON: send Content-Type: application/json"
                + (" (or a multipart/form-data upload)" if upload else ""),
            )
            return
        # Bodies here are small JSON documents: read the whole body first (bounded), so an
        # oversized one is refused before any handler runs.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                await self._reject(send, 413, "payload_too_large", self._too_large(limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        direct = None if scope.get("root_path") else self.direct.get((method, scope["path"]))
        if direct is not None:
            await direct(scope, body, replay, send, self.app)
            return
        await self.app(scope, replay, send)

    @staticmethod
    def _too_large(limit: int) -> str:
        return f"Request body is larger than {limit} bytes"

    @staticmethod
    async def _reject(send: Any, status: int, code: str, message: str) -> None:
        start, body = error_start(status, code, message)
        await send(start)
        await send({"type": "http.response.body", "body": body})


def _is_json(content_type: str) -> bool:
    content_type = content_type.lower()
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _is_file(content_type: str) -> bool:
    return content_type.lower() == "multipart/form-data"


class HeadAsGet:
    """`HEAD` wherever `GET` is served (health checks use it): the request goes to the GET
    route, its headers are answered and its body is dropped. A streaming answer (`GET
    /events`) is stopped as soon as its headers are out."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = asyncio.Event()

        async def headers_only(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body" and not answered.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                answered.set()

        serving = asyncio.ensure_future(self.app({**scope, "method": "GET"}, receive, headers_only))
        waiting = asyncio.ensure_future(answered.wait())
        try:
            await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
            for _ in range(3):  # a plain answer finishes within a few turns of the loop
                if serving.done():
                    break
                await asyncio.sleep(0)
        finally:
            waiting.cancel()
            if not serving.done():
                serving.cancel()  # a stream that would go on: its headers are out
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
        if not serving.cancelled():
            serving.result()  # an error is raised as GET would raise it
