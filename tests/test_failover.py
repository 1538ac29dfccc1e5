"""Redis Sentinel on loopback: a primary, a replica and three sentinels (`redis-server
--sentinel`), a real `smartgen api` and `smartgen worker` under a steady stream of
submits; the primary is SIGKILLed and the sentinels promote the replica.

Afterwards every job accepted with 202 completes, each generated once (the fake LLM
records every call); requests during the switch get 503, for a bounded time (printed);
both processes recover without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from smartgen.config import Settings
from smartgen.server.embedded import redis_binary
from tests.conftest import ApiServer, Process, free_port, register, wait_for_status, wait_http
from tests.fakellm import FakeLLM
from tests.test_worker import queue, running_worker

MASTER = "mymaster"
SWITCH_BOUND_SECONDS = 30.0  # the 503s must end within this (measured: a few seconds)


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


class SentinelSet:
    """A primary, a replica of it and three sentinels watching them, all on loopback."""

    def __init__(self) -> None:
        binary = redis_binary()
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="smartgen-sentinel-"))
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        data = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        data += ["--maxmemory-policy", "noeviction", "--repl-diskless-sync-delay", "0"]
        for name in ("primary", "replica"):
            (self.dir / name).mkdir()
        self._start("primary", ["--port", str(self.primary_port), *data], "primary")
        follow = ["--replicaof", "127.0.0.1", str(self.primary_port)]
        self._start("replica", ["--port", str(self.replica_port), *data, *follow], "replica")
        for i, port in enumerate(self.sentinel_ports):
            conf = self.dir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self._start(f"sentinel-{i}", [str(conf), "--sentinel"])

    def _start(self, name: str, args: list[str], subdir: str = "") -> None:
        log = (self.dir / f"{name}.log").open("wb")
        where = ["--dir", str(self.dir / subdir)] if subdir else []
        self.procs[name] = subprocess.Popen(
            [self.binary, *args, *where], stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
        )
        log.close()

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    async def master_port(self) -> int | None:
        """The master's port as the first answering sentinel says."""
        for port in self.sentinel_ports:
            client = aioredis.Redis(port=port, socket_timeout=1)
            try:
                host_port = await client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
                )
                return int(host_port[1])
            except Exception:
                continue
            finally:
                await client.aclose()
        return None

    async def ready(self, timeout: float = 30) -> None:
        """The replica is in sync and every sentinel knows both nodes and its peers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self._ready():
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the sentinel set did not come up (logs in {self.dir})")

    async def _ready(self) -> bool:
        replica = aioredis.Redis(port=self.replica_port, socket_timeout=1)
        try:
            if (await replica.info("replication")).get("master_link_status") != "up":
                return False
        except Exception:
            return False
        finally:
            await replica.aclose()
        for port in self.sentinel_ports:
            sentinel = aioredis.Redis(port=port, socket_timeout=1, decode_responses=True)
            try:
                (state,) = await sentinel.execute_command("SENTINEL", "MASTERS")
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                    return False
            except Exception:
                return False
            finally:
                await sentinel.aclose()
        return True

    def kill_primary(self) -> None:
        proc = self.procs["primary"]
        proc.kill()
        proc.wait(5)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    found = SentinelSet()
    yield found
    found.close()


def statuses_of(pending: dict[Any, Answer]) -> str:
    return ", ".join(f"{a.job_id} at {a.at:.2f}" for a in list(pending.values())[:5])


@dataclass
class Answer:
    at: float
    status: int | None  # None: no answer (the connection failed or timed out)
    job_id: str | None
    marker: str


async def _submit_steadily(
    url: str, headers: dict[str, str], unique: str, stop: asyncio.Event, answers: list[Answer]
) -> None:
    """One POST every 50 ms (a new one starts even while earlier ones wait), until `stop`."""

    async def one(client: httpx.AsyncClient, i: int) -> None:
        marker = f"[failover-{unique}-{i}]"
        body = {"prompt": f"steady {marker}", "contentType": "Blog Post Outline"}
        try:
            r = await client.post("/generate-content", json=body, headers=headers)
        except httpx.HTTPError:
            answers.append(Answer(time.monotonic(), None, None, marker))
            return
        job_id = r.json().get("jobId") if r.status_code == 202 else None
        answers.append(Answer(time.monotonic(), r.status_code, job_id, marker))

    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        pending: set[asyncio.Task[None]] = set()
        i = 0
        while not stop.is_set():
            task = asyncio.create_task(one(client, i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
        if pending:
            await asyncio.wait(pending)


async def test_primary_killed_sentinels_promote_and_nothing_is_lost(
    env: dict[str, str],
    processes: list[Process],
    fake_llm: FakeLLM,
    sentinel_set: SentinelSet,
    unique: str,
) -> None:
    await sentinel_set.ready()
    env = {
        **env,
        "REDIS_URL": "",
        "REDIS_SENTINELS": sentinel_set.sentinels,
        "REDIS_SENTINEL_MASTER": MASTER,
        "GENERATION_DELAY_SECONDS": "0",
        "QUEUE_TIMEOUT_SECONDS": "1",
        "GENERATE_RATE_LIMIT": "1000000000",  # on, out of reach
        "MAX_UNFINISHED_JOBS": "100000",
        "RECONCILE_INTERVAL_SECONDS": "1",
        "RECONCILE_GRACE_SECONDS": "2",
        "LOCK_DURATION_MS": "4000",
        "STALLED_INTERVAL_MS": "2000",
        "PROCESSING_LEASE_SECONDS": "8",
    }
    port = free_port()
    api = Process("api", env, PORT=str(port))
    worker = Process("worker", env)
    processes.extend([api, worker])
    url = f"http://127.0.0.1:{port}"
    await wait_http(url, api)
    pids = (api.proc.pid, worker.proc.pid)

    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        user = await register(client)
        stop = asyncio.Event()
        answers: list[Answer] = []
        submitting = asyncio.create_task(
            _submit_steadily(url, user["headers"], unique, stop, answers)
        )
        await asyncio.sleep(2.0)
        old_master = await sentinel_set.master_port()
        assert old_master == sentinel_set.primary_port
        killed_at = time.monotonic()
        sentinel_set.kill_primary()
        # Until the sentinels have promoted the replica and submits are accepted again
        # for a while.
        deadline = killed_at + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            promoted = await sentinel_set.master_port() == sentinel_set.replica_port
            recent = [a for a in answers if a.at > time.monotonic() - 3]
            if promoted and len(recent) > 20 and all(a.status == 202 for a in recent):
                break
        stop.set()
        await submitting
        assert await sentinel_set.master_port() == sentinel_set.replica_port

        accepted = [a for a in answers if a.status == 202]
        refused = [a for a in answers if a.status != 202]
        before = [a for a in accepted if a.at < killed_at]
        after = [a for a in accepted if a.at > killed_at]
        assert before and after, "submits must be accepted before the kill and after it"
        # Every refusal was a 503 (no 500, no hang), all within one bounded window.
        assert {a.status for a in refused} <= {503}, sorted({a.status for a in refused})
        if refused:
            window = max(a.at for a in refused) - min(a.at for a in refused)
            first = min(a.at for a in refused) - killed_at
        else:
            window = first = 0.0
        print(
            f"\nfailover: {len(answers)} submits, {len(accepted)} accepted, {len(refused)} "
            f"answered 503 during {window:.2f} s (the first {first:.2f} s after the kill)"
        )
        assert window < SWITCH_BOUND_SECONDS

        # Every accepted job completes, each generated exactly once.
        pending = {a.job_id: a for a in accepted}
        deadline = time.monotonic() + 60
        statuses: dict[str, str] = {}
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                r = await client.get(f"/generate-content/{job_id}", headers=user["headers"])
                if r.status_code == 200 and r.json()["status"] in ("completed", "failed"):
                    statuses[str(job_id)] = r.json()["status"]
                    del pending[job_id]
            await asyncio.sleep(0.3)
        assert not pending, (
            f"{len(pending)} accepted jobs never finished: {statuses_of(pending)}\n"
            f"worker:\n{worker.output()[-3000:]}\napi:\n{api.output()[-2000:]}"
        )
        assert set(statuses.values()) == {"completed"}
        calls = {a.marker: len(fake_llm.calls_for(a.marker)) for a in accepted}
        assert all(n == 1 for n in calls.values()), {m: n for m, n in calls.items() if n != 1}
        # A refused submit left no job behind that would run later.
        assert all(len(fake_llm.calls_for(a.marker)) == 0 for a in refused)

        # Both processes recovered by themselves: the same processes, ready, working.
        assert (api.proc.pid, worker.proc.pid) == pids
        assert api.proc.poll() is None and worker.proc.poll() is None
        assert (await client.get("/readyz")).status_code == 200
        r = await client.post(
            "/generate-content",
            json={"prompt": f"after [fo-after-{unique}]", "contentType": "Blog Post Outline"},
            headers=user["headers"],
        )
        assert r.status_code == 202
        job_id = r.json()["jobId"]
        for _ in range(100):
            body: dict[str, Any] = (
                await client.get(f"/generate-content/{job_id}", headers=user["headers"])
            ).json()
            if body["status"] == "completed":
                break
            await asyncio.sleep(0.2)
        assert body["status"] == "completed"


async def test_in_process_clients_follow_the_sentinels_and_close_cleanly(
    settings: Settings, sentinel_set: SentinelSet, unique: str
) -> None:
    """The API's, the worker's and the event bus's clients, built from REDIS_SENTINELS in
    this process: a job runs, and closing leaves no connection open (an unclosed one is a
    ResourceWarning, an error here)."""
    await sentinel_set.ready()
    s = settings.model_copy(
        update={
            "redis_url": None,
            "redis_sentinels": sentinel_set.sentinels,
            "redis_sentinel_master": MASTER,
            "generation_delay_seconds": 0.0,
        }
    )
    s.__dict__.pop("redis_connection_url", None)
    assert s.redis_display == f"sentinel://{sentinel_set.sentinels}/{MASTER}"
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        user = await register(client)
        async with running_worker(s):
            job = await queue(client, user["headers"], f"sentinel [in-process-{unique}]")
            done = await wait_for_status(client, job["jobId"], user["headers"], {"completed"})
        assert done["status"] == "completed"
        assert (await client.get("/readyz")).json()["checks"]["redis"] == "ok"
    gc.collect()
