"""Socket.IO end to end with real processes: two `smartgen api` processes and one
`smartgen worker`; the job is queued through API #1, the client listens on API #2.
Then the official JavaScript client (socket.io-client v4 from npm) in both transports."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Process, free_port, register, service_missing, wait_http
from tests.test_realtime import Listener

JS_DIR = Path(__file__).resolve().parent / "js"
WAIT = 30.0  # the job runs after GENERATION_DELAY_SECONDS=1; this only bounds a hang
SEED_KEYS = ["userId", "jobId", "status", "generatedContent", "completedAt"]


@pytest.fixture(params=["true", "false"], ids=["compact-connections", "stock-connections"])
def env(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    """The shared environment without the per-address registration limit: these tests
    register many users from 127.0.0.1 and must neither hit it nor use up its budget.
    Each test on both kinds of per-connection objects (SOCKETIO_COMPACT_CONNECTIONS)."""
    return {
        **env,
        "REGISTER_IP_RATE_LIMIT": "0",
        "SOCKETIO_COMPACT_CONNECTIONS": request.param,
    }


@dataclass
class System:
    api1: str
    api2: str
    processes: list[Process]

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.output()[-3000:]}" for p in self.processes)


@pytest.fixture
async def system(env: dict[str, str], processes: list[Process]) -> System:
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    apis = [Process("api", env, PORT=str(port)) for port in ports]
    processes.extend(apis)
    processes.append(Process("worker", env))
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    for url, proc in zip(urls, apis, strict=True):
        await wait_http(url, proc, timeout=WAIT)
    return System(api1=urls[0], api2=urls[1], processes=processes)


@pytest.fixture
async def listeners() -> AsyncIterator[Callable[[], Listener]]:
    made: list[Listener] = []

    def make() -> Listener:
        made.append(Listener())
        return made[-1]

    yield make
    for listener in made:
        await listener.close()


async def queue_job(http: httpx.AsyncClient, user: dict[str, Any], prompt: str) -> str:
    r = await http.post(
        "/generate-content",
        json={"prompt": prompt, "contentType": "Blog Post Outline"},
        headers=user["headers"],
    )
    assert r.status_code == 202, r.text
    return str(r.json()["jobId"])


async def seed_payload(http: httpx.AsyncClient, user: dict[str, Any], job_id: str) -> Any:
    """What `job_completed` must carry, from the job as GET /generate-content/{id} shows it."""
    r = await http.get(f"/generate-content/{job_id}", headers=user["headers"])
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "completed", job
    return {
        "userId": user["userId"],
        "jobId": job_id,
        "status": "completed",
        "generatedContent": job["generatedContent"],
        "completedAt": job["completedAt"],
    }


async def test_worker_event_reaches_client_on_another_api_process(
    system: System, listeners: Callable[[], Listener]
) -> None:
    async with httpx.AsyncClient(base_url=system.api1, timeout=10) as api1:
        user = await register(api1)
        listener = listeners()
        await listener.connect(system.api2, auth={"token": user["token"]})
        job_id = await queue_job(api1, user, "How to bake a sourdough bread")
        try:
            await listener.wait_for("job_status", job_id, within=WAIT)
            [completed] = await listener.wait_for("job_completed", job_id, within=WAIT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{system.logs()}") from None

        assert list(completed) == SEED_KEYS
        assert completed == await seed_payload(api1, user, job_id)
        # job_status for every transition, in order, and job_completed after `processing`.
        order = [(event, data["status"]) for event, data in listener.received]
        assert order == [
            ("job_status", "queued"),  # API #1 → Redis → API #2
            ("job_status", "processing"),  # the worker → Redis → API #2
            ("job_status", "completed"),
            ("job_completed", "completed"),
        ]


# --- the official JavaScript client ---------------------------------------------------------


@pytest.fixture(scope="module")
def js_client() -> Iterator[Path]:
    """tests/js with its node_modules installed (`npm ci`, once, under a lock)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        service_missing(
            "node/npm are not installed: the socket.io-client compatibility test needs them"
        )
    marker = JS_DIR / "node_modules" / "socket.io-client" / "package.json"
    digest = hashlib.sha1(str(JS_DIR).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"smartgen-npm-{digest}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other test sessions share this checkout
        if not marker.exists():
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=JS_DIR,
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    version = json.loads(marker.read_text())["version"]
    assert version.startswith("4."), f"socket.io-client {version}, expected v4"
    yield JS_DIR


async def read_line(stream: asyncio.StreamReader, seen: list[str], within: float) -> str:
    line = (await asyncio.wait_for(stream.readline(), within)).decode().strip()
    seen.append(line)
    return line


@pytest.fixture
async def sticky_system(env: dict[str, str], processes: list[Process]) -> System:
    """One API of two processes behind one port (API_WORKERS=2), and a worker."""
    port = free_port()
    api = Process("api", env, PORT=str(port), API_WORKERS="2")
    processes.extend([api, Process("worker", env)])
    url = f"http://127.0.0.1:{port}"
    await wait_http(url, api, timeout=WAIT)
    return System(api1=url, api2=url, processes=processes)


@pytest.mark.parametrize("mode", ["websocket", "polling"])
async def test_official_js_client(system: System, js_client: Path, mode: str) -> None:
    await official_js_client_gets_its_event(system, js_client, mode)


@pytest.mark.parametrize("mode", ["websocket", "polling"])
async def test_official_js_client_with_api_workers(
    sticky_system: System, js_client: Path, mode: str
) -> None:
    """Sessions stay on their process: twice, so that both processes serve one."""
    for _ in range(2):
        await official_js_client_gets_its_event(sticky_system, js_client, mode)


async def official_js_client_gets_its_event(system: System, js_client: Path, mode: str) -> None:
    async with httpx.AsyncClient(base_url=system.api1, timeout=10) as api1:
        user = await register(api1)
        proc = await asyncio.create_subprocess_exec(
            "node",
            "listen.mjs",
            system.api2,
            mode,
            str(int(WAIT)),
            cwd=js_client,
            env={**os.environ, "SMARTGEN_TOKEN": user["token"]},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        progress: list[str] = []
        try:
            # Queue the job only once the client is connected (it would miss it otherwise).
            while not (await read_line(proc.stderr, progress, WAIT)).startswith("connected"):
                assert not proc.stderr.at_eof(), f"the client ended: {progress}"
            assert progress[0] == f"opened via {mode}", progress
            job_id = await queue_job(api1, user, f"js client over {mode}")
            out, err = await asyncio.wait_for(proc.communicate(), WAIT + 5)
        finally:
            if proc.returncode is None:
                proc.kill()
                with contextlib.suppress(Exception):
                    await proc.communicate()
        progress += err.decode().splitlines()
        assert proc.returncode == 0, f"{progress}\n{system.logs()}"
        lines = out.decode().splitlines()
        assert len(lines) == 1, lines
        payload = json.loads(lines[0])
        assert list(payload) == SEED_KEYS
        assert payload == await seed_payload(api1, user, job_id)
        if mode == "polling":
            assert "upgraded to websocket" in progress, progress


async def test_js_client_refusal_reason(system: System, js_client: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "node",
        "listen.mjs",
        system.api2,
        "websocket",
        str(int(WAIT)),
        cwd=js_client,
        env={**os.environ, "SMARTGEN_TOKEN": "not-a-jwt"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                await proc.communicate()
    assert proc.returncode == 3, err.decode()
    assert err.decode().splitlines()[-1] == "connect_error: Malformed token"
    assert out == b""
