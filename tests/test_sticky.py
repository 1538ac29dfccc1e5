"""A multi-process API (API_WORKERS > 1, sticky.py): real `smartgen api` processes behind the
dispatcher, real Socket.IO clients over polling and websocket, raw keep-alive connections
that carry one worker's session to another."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from smartgen.server.sticky import owner_in_query, route_of, sid_owner
from tests.conftest import Process, free_port, register, wait_http
from tests.fakellm import FakeLLM

WAIT = 20.0


def test_session_ids_name_their_worker() -> None:
    assert sid_owner("0.abc") == 0
    assert sid_owner("12.x-y_z") == 12
    for other in ("abc", ".abc", "x.abc", "1234.abc", ""):
        assert sid_owner(other) is None
    assert owner_in_query(b"EIO=4&transport=polling&sid=1.AbC") == 1
    assert owner_in_query(b"EIO=4&sid=1%2EAbC") == 1  # percent-encoded
    assert owner_in_query(b"EIO=4&transport=polling") is None


def test_requests_are_routed_by_the_session_in_their_head() -> None:
    assert route_of(b"GET /socket.io/?EIO=4&transport=polling&sid=1.x HTTP/1.1\r\nHost: a") == 1
    assert route_of(b"POST /socket.io/?EIO=4&sid=0.y&transport=polling HTTP/1.1\r\n") == 0
    assert route_of(b"GET /socket.io/?EIO=4&transport=websocket&sid=1.z HTTP/1.1\r\n") == 1
    # No session yet, not Socket.IO, or not a request line: any worker.
    assert route_of(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n") is None
    assert route_of(b"GET /generate-content?sid=1.x HTTP/1.1\r\n") is None
    assert route_of(b"\x16\x03\x01garbage") is None
    assert route_of(b"") is None


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read().lower()
    except FileNotFoundError:
        return False


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


class RawConnection:
    """One kept-alive HTTP/1.1 connection, for requests that must share it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
            f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        async with asyncio.timeout(WAIT):
            status_line = await self.reader.readline()
            length, chunked = 0, False
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                if name.lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if not chunked:
                return int(status_line.split()[1]), await self.reader.readexactly(length)
            body = b""
            while size := int((await self.reader.readline()).strip(), 16):
                body += await self.reader.readexactly(size)
                await self.reader.readline()
            await self.reader.readline()
            return int(status_line.split()[1]), body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def sticky_api(env: dict[str, str], processes: list[Process]) -> tuple[Process, int]:
    port = free_port()
    api = Process("api", {**env, "REGISTER_IP_RATE_LIMIT": "0"}, PORT=str(port), API_WORKERS="2")
    processes.append(api)
    await wait_http(f"http://127.0.0.1:{port}", api)
    return api, port


async def handshake(conn: RawConnection) -> str:
    status, body = await conn.request("GET", "/socket.io/?EIO=4&transport=polling")
    assert status == 200, body
    assert body.startswith(b"0")
    return str(json.loads(body[1:])["sid"])


async def test_sessions_stay_with_their_worker_over_polling_and_websocket(
    env: dict[str, str],
    sticky_api: tuple[Process, int],
    processes: list[Process],
    fake_llm: FakeLLM,
    unique: str,
) -> None:
    api, port = sticky_api
    url = f"http://127.0.0.1:{port}"
    worker = Process("worker", env)
    processes.append(worker)
    assert len(children_of(api.proc.pid)) == 2
    marker = f"[sticky-{unique}]"
    clients: list[tuple[socketio.AsyncClient, asyncio.Queue[Any]]] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            users = [await register(http) for _ in range(4)]
            # Polling only (every request of a session must reach its worker), and the
            # default polling → websocket upgrade; round robin spreads them on both workers.
            for i, user in enumerate(users):
                sio = socketio.AsyncClient(reconnection=False)
                inbox: asyncio.Queue[Any] = asyncio.Queue()
                sio.on("job_completed", inbox.put)
                transports = ["polling"] if i % 2 == 0 else None
                await sio.connect(
                    url, auth={"token": user["token"]}, transports=transports, wait_timeout=WAIT
                )
                clients.append((sio, inbox))
            owners = {sid_owner(sio.eio.sid) for sio, _ in clients}
            assert owners == {0, 1}
            jobs = []
            for i, user in enumerate(users):
                r = await http.post(
                    "/generate-content",
                    json={"prompt": f"p{i} {marker}", "contentType": "Blog Post Outline"},
                    headers=user["headers"],
                )
                assert r.status_code == 202, r.text
                jobs.append(r.json()["jobId"])
            for (sio, inbox), job_id in zip(clients, jobs, strict=True):
                event = await asyncio.wait_for(inbox.get(), WAIT)
                assert event["jobId"] == job_id
                assert event["status"] == "completed"
                assert sio.transport() in ("polling", "websocket")
    finally:
        for sio, _ in clients:
            # abort: a polling client would otherwise wait out its pending long-poll.
            await sio.eio.disconnect(abort=True)
            await sio.shutdown()
    assert len(fake_llm.calls_for(marker)) == 4


async def test_a_kept_alive_connection_reaches_another_workers_session(
    sticky_api: tuple[Process, int], unique: str
) -> None:
    """A connection the dispatcher gave to one worker carries requests for the other
    worker's session (as a proxy's pooled connection would): they are forwarded."""
    _, port = sticky_api
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        user = await register(http)
    first, second = await RawConnection.open(port), await RawConnection.open(port)
    try:
        sid = await handshake(first)
        # The second connection's first request is no session's: it goes to the other
        # worker in turn (round robin), as a fresh handshake on it shows.
        other = await handshake(second)
        assert {sid_owner(sid), sid_owner(other)} == {0, 1}
        # Now the first session's messages travel over the second connection.
        connect = b"40" + json.dumps({"token": user["token"]}).encode()
        status, body = await second.request(
            "POST", f"/socket.io/?EIO=4&transport=polling&sid={sid}", connect
        )
        assert (status, body) == (200, b"OK")
        status, body = await second.request("GET", f"/socket.io/?EIO=4&transport=polling&sid={sid}")
        assert status == 200
        assert body.startswith(b"40{"), body  # the namespace's connect acknowledgement
        # A session no worker holds is refused as Engine.IO refuses unknown sessions.
        status, _ = await second.request("GET", "/socket.io/?EIO=4&transport=polling&sid=1.nope")
        assert status == 400
        # REST requests on the same connections still work.
        status, _ = await first.request("GET", "/healthz")
        assert status == 200
    finally:
        await first.close()
        await second.close()


async def test_a_dead_worker_is_replaced_and_sigterm_stops_all(
    sticky_api: tuple[Process, int],
) -> None:
    api, port = sticky_api
    before = children_of(api.proc.pid)
    os.kill(before[0], signal.SIGKILL)
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(200):  # bounded: the replacement starts within a few seconds
            after = children_of(api.proc.pid)
            if len(after) == 2 and before[0] not in after:
                break
            await asyncio.sleep(0.1)
        assert len(after) == 2 and before[0] not in after
        # Every connection is served again, whichever worker it lands on.
        for _ in range(6):
            async with httpx.AsyncClient(timeout=10) as fresh:  # a new connection each time
                r = await fresh.get(f"http://127.0.0.1:{port}/healthz")
                assert r.status_code == 200
        del http
    assert api.stop() == 0, api.output()
    for pid in after:
        assert not is_running(pid)
    assert "Traceback" not in api.output()


async def test_a_taken_port_is_one_line_and_exit_1(
    env: dict[str, str], sticky_api: tuple[Process, int]
) -> None:
    _, port = sticky_api
    second = Process("api", env, PORT=str(port), API_WORKERS="2")
    try:
        code = await asyncio.to_thread(second.proc.wait, 30)
        assert code == 1
        assert "cannot listen on 127.0.0.1:" in second.output()
        assert "Traceback" not in second.output()
    finally:
        second.stop()
