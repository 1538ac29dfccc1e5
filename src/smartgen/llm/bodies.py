"""Reading a model provider's answer with bounds: no compressed bodies (a gzip bomb), no
body or stream past LLM_MAX_RESPONSE_BYTES, error bodies read only as far as they matter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from smartgen.llm import answers
from smartgen.llm.errors import LLMError

ERROR_BODY_BYTES = 64 * 1024


def _too_large(limit: int) -> LLMError:
    return LLMError(
        f"the model provider's answer is larger than {limit} bytes (LLM_MAX_RESPONSE_BYTES)",
        retryable=False,
    )


def refuse_compression(response: aiohttp.ClientResponse) -> None:
    """Only identity is accepted; a compressed body is not unpacked (a gzip bomb)."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        shown = "".join(c for c in encoding[:20] if c.isalnum() or c in "-_, ")
        raise LLMError(
            f"the model provider sent a compressed answer ({shown}) although none was accepted",
            retryable=False,
        )


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, refused past `limit` bytes (declared or received)."""
    refuse_compression(response)
    declared = response.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def error_body(response: aiohttp.ClientResponse) -> Any:
    """The JSON body of an error answer, if it is small enough to matter (64 KiB)."""
    try:
        return answers.loads(await read_capped(response, ERROR_BODY_BYTES))
    except LLMError:
        return None  # the status alone classifies the error


async def sse_lines(content: aiohttp.StreamReader, limit: int) -> AsyncIterator[str]:
    """The lines of an event stream without their endings (CRLF, LF or CR, as SSE allows),
    refused once the stream passes `limit` bytes (comments and blank lines count too).

    Split here rather than with `StreamReader.readline`, which caps a line at twice the
    read buffer (128 KiB): one large chunk from a provider must not fail the stream.
    """
    pending: list[bytes] = []
    size = 0
    async for data in content.iter_any():
        size += len(data)
        if size > limit:
            raise _too_large(limit)
        if b"\n" not in data and b"\r" not in data:
            pending.append(data)
            continue
        if pending:
            pending.append(data)
            data = b"".join(pending)
            pending = []
        lines = data.splitlines(keepends=True)
        if not lines[-1].endswith((b"\n", b"\r")):
            pending.append(lines.pop())
        # A CRLF split across two reads leaves an extra empty line: harmless, never data.
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
    if pending:
        yield b"".join(pending).decode("utf-8", "replace")


async def lines_of(raw: bytes) -> AsyncIterator[str]:
    for line in raw.splitlines():
        yield line.decode("utf-8", "replace")
