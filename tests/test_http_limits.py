"""Slow and greedy HTTP clients against a real `smartgen api` process (issue 21, item 6):
raw sockets that send nothing, a head one line at a time, a body one byte at a time, a
huge header, too many connections. Each must end with the server closing the connection
(a 408/431/503 first where there is something to answer). No test bounds the time the
server takes; pytest's own timeout ends a test whose connection is never closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Process, free_port, wait_http

FAST = {
    "HTTP_HEADER_TIMEOUT_SECONDS": "1",
    "HTTP_BODY_TIMEOUT_SECONDS": "1",
    "HTTP_KEEPALIVE_TIMEOUT_SECONDS": "1",
    "HTTP_MAX_HEADER_BYTES": "8192",
}


async def start_api(env: dict[str, str], processes: list[Process], **extra: str) -> int:
    port = free_port()
    api = Process("api", env, PORT=str(port), **extra)
    processes.append(api)
    await wait_http(f"http://127.0.0.1:{port}", api)
    return port


@pytest.fixture
async def port(env: dict[str, str], processes: list[Process]) -> int:
    return await start_api(env, processes, **FAST)


@contextlib.asynccontextmanager
async def raw(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while True:
        try:
            data = await reader.read(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def answer(data: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


async def test_a_client_that_sends_nothing_is_closed(port: int) -> None:
    async with raw(port) as (reader, _):
        assert await until_closed(reader) == b""


async def test_a_head_sent_one_line_at_a_time_is_closed(port: int) -> None:
    async with raw(port) as (reader, writer):

        async def trickle() -> None:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            with contextlib.suppress(OSError):
                for i in range(10_000):
                    await asyncio.sleep(0.2)
                    writer.write(b"X-Slow-%d: 1\r\n" % i)
                    await writer.drain()

        task = asyncio.create_task(trickle())
        try:
            data = await until_closed(reader)
        finally:
            task.cancel()
    status, body = answer(data)
    assert status == 408
    assert body["error"] == "request_timeout" and "headers" in body["message"]


async def test_a_body_sent_one_byte_at_a_time_is_closed(port: int) -> None:
    async with raw(port) as (reader, writer):
        writer.write(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{"
        )

        async def trickle() -> None:
            with contextlib.suppress(OSError):
                for _ in range(100_000):
                    await asyncio.sleep(0.2)
                    writer.write(b" ")
                    await writer.drain()

        task = asyncio.create_task(trickle())
        try:
            data = await until_closed(reader)
        finally:
            task.cancel()
    status, body = answer(data)
    assert status == 408
    assert body["error"] == "request_timeout" and "body" in body["message"]


async def test_a_huge_header_is_refused(port: int) -> None:
    async with raw(port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60_000)
        with contextlib.suppress(OSError):
            await writer.drain()
        data = await until_closed(reader)
    status, body = answer(data)
    assert status == 431
    assert body["error"] == "headers_too_large"


async def test_a_complete_head_past_the_limit_is_refused_even_in_one_read(port: int) -> None:
    """The head arrives whole (it ends) in one write, and on a kept-alive connection's
    second request: both are measured as parsed, not only while they do not end."""
    big = b"X-Big: " + b"b" * 20_000 + b"\r\n"
    async with raw(port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
        status, body = answer(await until_closed(reader))
    assert status == 431 and body["error"] == "headers_too_large"
    async with raw(port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big * 2 + b"\r\n")
        data = await until_closed(reader)
    assert b"HTTP/1.1 431" in data and b"headers_too_large" in data


async def test_a_websocket_upgrade_with_a_huge_head_is_refused(
    port: int, processes: list[Process]
) -> None:
    async with raw(port) as (reader, writer):
        writer.write(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Big: " + b"w" * 20_000 + b"\r\n\r\n"
        )
        status, body = answer(await until_closed(reader))
    assert status == 431 and body["error"] == "headers_too_large"
    # Still serving, and nothing went wrong inside (the refused upgrade is not carried out).
    async with raw(port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 200")
    assert "Traceback" not in processes[-1].output(), processes[-1].output()[-3000:]


async def test_an_idle_kept_alive_connection_is_closed(port: int) -> None:
    async with raw(port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await until_closed(reader)
    assert data.startswith(b"HTTP/1.1 200")


async def test_well_behaved_requests_still_pass(port: int) -> None:
    """A second request on a kept-alive connection gets its own head timer, and a body
    sent promptly is answered by the route (a 401/422, not a 408)."""
    async with raw(port) as (reader, writer):
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            line = await reader.readline()
            assert line.startswith(b"HTTP/1.1 200"), line
            length = 0
            while (header := await reader.readline()) != b"\r\n":
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            await reader.readexactly(length)
        body = b'{"email": "nobody@example.com", "password": "wrong password"}'
        writer.write(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        data = await until_closed(reader)
    assert data.split(b" ", 2)[1] == b"401", data[:200]


async def test_connections_past_the_limit_are_refused(
    env: dict[str, str], processes: list[Process]
) -> None:
    port = await start_api(env, processes, HTTP_MAX_CONNECTIONS="5")
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    try:
        async with raw(port) as (reader, writer):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await until_closed(reader)
        assert data.startswith(b"HTTP/1.1 503"), data[:200]
        # The API's own error shape, not uvicorn's plain text, and when to come back.
        status, body = answer(data)
        assert status == 503 and body["error"] == "server_busy", data[:300]
        assert b"\r\nretry-after: 1\r\n" in data.lower(), data[:300]
        # A WebSocket upgrade is a connection too (uvicorn's own limit lets it through).
        async with raw(port) as (reader, writer):
            writer.write(
                b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            status, body = answer(await until_closed(reader))
        assert status == 503 and body["error"] == "server_busy"
    finally:
        for _, w in held:
            w.close()
    # Once the server has seen them go, requests are served again.
    while True:
        async with raw(port) as (reader, writer):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await until_closed(reader)
        if data.startswith(b"HTTP/1.1 200"):
            break
        assert data.startswith(b"HTTP/1.1 503"), data[:200]
        await asyncio.sleep(0.1)


async def test_a_late_timer_waits_for_one_on_time_before_its_verdict() -> None:
    """A busy event loop is not a slow client: a guard timer that fires late is armed
    again, and the verdict comes only from a timer that fires on time."""
    import time
    from types import SimpleNamespace

    from smartgen.server.http_guard import LATE_SECONDS, GuardedHttpToolsProtocol

    verdicts: list[float] = []
    given = asyncio.Event()
    guard: Any = SimpleNamespace(_head_timer=None, _body_timer=None)

    def verdict() -> None:
        verdicts.append(time.monotonic())
        given.set()

    guard._head_too_slow = verdict
    guard._rearm = lambda verdict, timer: GuardedHttpToolsProtocol._rearm(guard, verdict, timer)
    guard._arm = lambda delay, verdict: GuardedHttpToolsProtocol._arm(guard, delay, verdict)
    guard._head_timer = guard._arm(0.01, guard._head_too_slow)
    time.sleep(LATE_SECONDS * 3)  # noqa: ASYNC251 - the loop busy past the timer's time
    unblocked = time.monotonic()
    await given.wait()
    # The late firing armed it again: the verdict came a whole LATE_SECONDS later, from a
    # timer that fired on time (a lower bound: a correctness check, not a speed one).
    assert verdicts[0] - unblocked >= LATE_SECONDS * 0.9
    assert len(verdicts) == 1
