"""Graceful stops of real `smartgen worker` and `smartgen api` processes (SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import httpx

from tests.conftest import Process, free_port, register, start_system, wait_for_status, wait_http
from tests.fakellm import FakeLLM, Reply
from tests.test_worker import queue


async def wait_output(proc: Process, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{proc.output()}"
        await asyncio.sleep(0.05)


async def test_sigterm_worker_takes_no_new_jobs(
    env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    system = {
        **env,
        "GENERATION_DELAY_SECONDS": "0",
        "LOG_LEVEL": "info",
        "SHUTDOWN_GRACE_SECONDS": "20",
    }
    _, worker, url = await start_system(system, processes)
    running, later = f"[running-{unique}]", f"[later-{unique}]"
    fake_llm.script(running, [Reply(delay=3.0)])
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        first = await queue(client, user["headers"], f"x {running}")
        deadline = time.monotonic() + 20
        while not fake_llm.calls_for(running):
            assert time.monotonic() < deadline, "the first job never reached the model"
            await asyncio.sleep(0.05)
        worker.proc.send_signal(signal.SIGTERM)
        await wait_output(worker, "worker stopping")
        # Due at once, while the stopping worker still runs the first job and has room
        # for 49 more.
        second = await queue(client, user["headers"], f"y {later}")
        code = await asyncio.to_thread(worker.proc.wait, 30)
        assert code == 0, worker.output()
        done = await wait_for_status(client, first["jobId"], user["headers"], {"completed"})
        assert done["attempts"] == 1
        waiting = await wait_for_status(client, second["jobId"], user["headers"], {"queued"})
        assert "startedAt" not in waiting
        assert fake_llm.calls_for(later) == []
        # It was left in the queue, not lost: the next worker runs it.
        processes.append(Process("worker", system))
        await wait_for_status(client, second["jobId"], user["headers"], {"completed"}, 30)
    assert len(fake_llm.calls_for(later)) == 1
    assert len(fake_llm.calls_for(running)) == 1


async def test_sigterm_api_finishes_the_request_in_flight(
    env: dict[str, str], processes: list[Process], unique: str
) -> None:
    """A request whose body is still arriving when SIGTERM comes is answered in full; the
    port stops taking new connections meanwhile; the process then exits 0."""
    port = free_port()
    api = Process("api", {**env, "LOG_LEVEL": "info"}, PORT=str(port))
    processes.append(api)
    await wait_http(f"http://127.0.0.1:{port}", api)
    body = json.dumps({"email": f"late-{unique}@example.com", "password": "correct horse"}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /auth/register HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        await writer.drain()
        # uvicorn answers 100 Continue once the app asks for the body: the request is in
        # the app's hands now, in flight.
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)).startswith(
            b"HTTP/1.1 100"
        )
        api.proc.send_signal(signal.SIGTERM)
        await wait_output(api, "Shutting down")
        with_new_connection = True
        deadline = time.monotonic() + 20
        while with_new_connection:  # the listening socket closes first
            assert time.monotonic() < deadline, "the API kept accepting connections"
            try:
                _, probe = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                with_new_connection = False
            else:
                probe.close()
                await asyncio.sleep(0.05)
        writer.write(body)
        await writer.drain()
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)).decode()
        assert head.startswith("HTTP/1.1 201"), head
        length = int(
            next(
                line.split(":", 1)[1]
                for line in head.split("\r\n")
                if line.lower().startswith("content-length:")
            )
        )
        answer = json.loads(await reader.readexactly(length))
        assert answer["user"]["email"] == f"late-{unique}@example.com"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert await asyncio.to_thread(api.proc.wait, 30) == 0, api.output()
    assert "Traceback" not in api.output()
    # The registration was kept: a new API on the same store logs the user in.
    again = Process("api", env, PORT=str(port))
    processes.append(again)
    await wait_http(f"http://127.0.0.1:{port}", again)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        r = await client.post(
            "/auth/login",
            json={"email": f"late-{unique}@example.com", "password": "correct horse"},
        )
        assert r.status_code == 200, r.text
