"""Faults injected over real `smartgen api` / `smartgen worker` processes and real servers
(Redis, the stores, the fake LLM): nothing lost, nothing done twice. The tests of the
store's behaviour (reconciler, a worker killed mid-job) run on every store."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import (
    Process,
    RedisServer,
    all_stores,
    free_port,
    register,
    start_system,
    wait_for_status,
    wait_http,
)
from tests.fakellm import FakeLLM, Reply
from tests.test_worker import queue


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, with AOF, so that it may be flushed and restarted."""
    server = RedisServer(appendonly=True)
    yield server
    server.close()


def on_redis(env: dict[str, str], redis: RedisServer, **changes: str) -> dict[str, str]:
    return {**env, "REDIS_URL": redis.url, **changes}


async def start_api(env: dict[str, str], processes: list[Process]) -> str:
    port = free_port()
    api = Process("api", env, PORT=str(port))
    processes.append(api)
    url = f"http://127.0.0.1:{port}"
    await wait_http(url, api)
    return url


async def flushall(redis: RedisServer) -> None:
    r = aioredis.from_url(redis.url)
    try:
        # An event of the request just answered may still be on its way to the log (the
        # publisher writes in the background): flush until nothing comes back.
        for _ in range(100):
            await r.flushall()
            await asyncio.sleep(0.05)
            if await r.dbsize() == 0:
                break
        assert await r.dbsize() == 0
    finally:
        await r.aclose()


@all_stores
async def test_reconciler_requeues_jobs_redis_lost(
    env: dict[str, str],
    processes: list[Process],
    private_redis: RedisServer,
    fake_llm: FakeLLM,
    unique: str,
) -> None:
    system = on_redis(
        env,
        private_redis,
        GENERATION_DELAY_SECONDS="2",
        RECONCILE_INTERVAL_SECONDS="0.5",
        RECONCILE_GRACE_SECONDS="0.2",
    )
    marker = f"[flushed-{unique}]"
    url = await start_api(system, processes)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x {marker}")
        # Redis loses everything before the job's time (FLUSHALL on our own server).
        await flushall(private_redis)
        processes.append(Process("worker", system))
        job = await wait_for_status(
            client, queued["jobId"], user["headers"], {"completed", "failed"}, 30
        )
    assert job["status"] == "completed"
    assert len(fake_llm.calls_for(marker)) == 1


@all_stores
async def test_reconciler_fails_jobs_past_max_age(
    env: dict[str, str], processes: list[Process], private_redis: RedisServer, unique: str
) -> None:
    system = on_redis(
        env,
        private_redis,
        GENERATION_DELAY_SECONDS="0",
        RECONCILE_INTERVAL_SECONDS="0.5",
        RECONCILE_GRACE_SECONDS="0",
        RECONCILE_MAX_AGE_SECONDS="0.5",
    )
    url = await start_api(system, processes)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x [old-{unique}]")
        await flushall(private_redis)  # its queue entry is gone (the user's token is not)
        await asyncio.sleep(1.0)  # time passes: the job is now older than the maximum age
        processes.append(Process("worker", system))
        job = await wait_for_status(
            client, queued["jobId"], user["headers"], {"completed", "failed"}, 30
        )
    assert job["status"] == "failed"
    assert "could not be processed in time" in job["error"]


async def test_redis_restart_keeps_delayed_jobs_and_clients_reconnect(
    env: dict[str, str],
    processes: list[Process],
    private_redis: RedisServer,
    fake_llm: FakeLLM,
    unique: str,
) -> None:
    system = on_redis(env, private_redis, GENERATION_DELAY_SECONDS="4", QUEUE_TIMEOUT_SECONDS="1")
    marker = f"[restart-{unique}]"
    _, _, url = await start_system(system, processes)
    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x {marker}")
        private_redis.stop()
        # Redis down: a clear 503 and no orphan job.
        r = await client.post(
            "/generate-content",
            json={"prompt": f"lost {marker}", "contentType": "Blog Post Outline"},
            headers=user["headers"],
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "queue_unavailable"
        listed = (await client.get("/generate-content", headers=user["headers"])).json()
        assert [j["jobId"] for j in listed] == [queued["jobId"]]
        assert (await client.get("/readyz")).status_code == 503
        private_redis.start()  # same port, same AOF: the delayed job is still there
        job = await wait_for_status(
            client, queued["jobId"], user["headers"], {"completed", "failed"}, 40
        )
        assert job["status"] == "completed"
        # Both sides reconnected by themselves.
        again = await queue(client, user["headers"], f"y {marker}")
        job2 = await wait_for_status(
            client, again["jobId"], user["headers"], {"completed", "failed"}, 40
        )
        assert job2["status"] == "completed"
        assert (await client.get("/readyz")).status_code == 200
    assert len(fake_llm.calls_for(marker)) == 2


@pytest.fixture
def fault_env(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "LOCK_DURATION_MS": "2000",
        "STALLED_INTERVAL_MS": "1000",
        "PROCESSING_LEASE_SECONDS": "5",
        "GENERATION_DELAY_SECONDS": "0",
    }


async def _wait_calls(fake: FakeLLM, marker: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(fake.calls_for(marker)) < count:
        assert time.monotonic() < deadline, f"expected {count} LLM calls for {marker}"
        await asyncio.sleep(0.05)


@all_stores
async def test_worker_killed_mid_job_is_recovered_by_another(
    fault_env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    _, first, url = await start_system(fault_env, processes)
    marker = f"[sigkill-{unique}]"
    fake_llm.script(marker, [Reply(delay=3.0)])
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x {marker}")
        await _wait_calls(fake_llm, marker, 1)
        first.kill()  # SIGKILL while the LLM call is in flight
        second = Process("worker", fault_env)
        processes.append(second)
        job = await wait_for_status(
            client, queued["jobId"], user["headers"], {"completed", "failed"}, 40
        )
    assert job["status"] == "completed"
    assert len(fake_llm.calls_for(marker)) == 2  # the killed call, and the one that finished


async def test_sigterm_finishes_running_job_then_exits_zero(
    fault_env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    _, worker, url = await start_system(fault_env, processes)
    marker = f"[sigterm-{unique}]"
    fake_llm.script(marker, [Reply(delay=2.0)])
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x {marker}")
        await _wait_calls(fake_llm, marker, 1)
        worker.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.proc.wait, 20)
        assert code == 0, worker.output()
        r = await client.get(f"/generate-content/{queued['jobId']}", headers=user["headers"])
        assert r.json()["status"] == "completed"
    assert len(fake_llm.calls_for(marker)) == 1


async def test_sigterm_beyond_grace_returns_job_to_queue(
    fault_env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    # The model answers after 60 s (within LLM_TIMEOUT_SECONDS): a worker that waited for
    # the call could not have exited within the 20 s the test waits for it.
    env = {**fault_env, "SHUTDOWN_GRACE_SECONDS": "1", "LLM_TIMEOUT_SECONDS": "90"}
    _, worker, url = await start_system(env, processes)
    marker = f"[grace-{unique}]"
    fake_llm.script(marker, [Reply(delay=60.0)])
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x {marker}")
        await _wait_calls(fake_llm, marker, 1)
        worker.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.proc.wait, 20)
        assert code == 0, worker.output()
        replacement = Process("worker", env)
        processes.append(replacement)
        job = await wait_for_status(
            client, queued["jobId"], user["headers"], {"completed", "failed"}, 40
        )
    assert job["status"] == "completed"


class MongoServer:
    """A MongoDB wire-protocol server of this test's own, restartable on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.path = tempfile.mkdtemp(prefix="smartgen-mongo-fault-")
        self.server: Any = None
        self.start()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/faults"

    def start(self) -> None:
        from secantus import SecantusDBServer

        self.server = SecantusDBServer(
            host="127.0.0.1", port=self.port, storage_path=self.path, replica_set_name=None
        )
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.path, ignore_errors=True)


async def kept_result(redis_url: str, prefix: str, job_id: str) -> bool:
    """Whether the job's queue message carries a kept result (the worker's `keep`)."""
    r = aioredis.from_url(redis_url)
    try:
        data = await r.hget(f"{prefix}:content-generation:{job_id}", "data")
    finally:
        await r.aclose()
    return data is not None and '"result"' in data.decode()


async def test_store_down_keeps_llm_result_and_api_answers_503(
    env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    mongo = MongoServer()
    try:
        # The retry comes at least 2 s (backoff 4 s, jitter down to half) after the result
        # was kept; the database is back as soon as that is seen: a margin of seconds.
        system = {
            **env,
            "MONGO_URI": mongo.uri,
            "GENERATION_DELAY_SECONDS": "0",
            "STORE_WRITE_RETRY_SECONDS": "0.5",
            "JOB_BACKOFF_MS": "4000",
        }
        system.pop("DATABASE_URL", None)
        marker = f"[storedown-{unique}]"
        fake_llm.script(marker, [Reply(delay=1.5)])
        _, _, url = await start_system(system, processes)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            user = await register(client)
            queued = await queue(client, user["headers"], f"x {marker}")
            await _wait_calls(fake_llm, marker, 1)
            await asyncio.to_thread(mongo.stop)  # the database goes away mid-call
            r = await client.get(f"/generate-content/{queued['jobId']}", headers=user["headers"])
            assert r.status_code == 503
            assert r.json()["error"] == "store_unavailable"
            r = await client.get("/readyz")  # names the store, not Redis
            assert r.status_code == 503
            assert r.json()["checks"] == {"mongodb": "unavailable", "redis": "ok"}
            deadline = time.monotonic() + 30
            while not await kept_result(env["REDIS_URL"], env["QUEUE_PREFIX"], queued["jobId"]):
                assert time.monotonic() < deadline, "the worker never kept the LLM's result"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(mongo.start)
            job = await wait_for_status(
                client, queued["jobId"], user["headers"], {"completed", "failed"}, 40
            )
            assert (await client.get("/readyz")).json()["checks"]["mongodb"] == "ok"
        assert job["status"] == "completed"
        assert job["attempts"] == 2  # the first attempt could not store its result
        assert len(fake_llm.calls_for(marker)) == 1  # the kept result was stored, not regenerated
    finally:
        for proc in processes:  # before their database goes away for good
            proc.stop()
        mongo.close()
