"""Faults injected over real processes and servers: nothing lost, nothing done twice."""

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

from smartgen.config import Settings
from tests.conftest import (
    ApiServer,
    Process,
    RedisServer,
    free_port,
    register,
    start_system,
    wait_for_status,
)
from tests.fakellm import FakeLLM, Reply
from tests.test_worker import queue, running_worker


def with_changes(settings: Settings, **changes: Any) -> Settings:
    changed = settings.model_copy(update=changes)
    changed.__dict__.pop("redis_connection_url", None)  # a cached derived value
    return changed


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, with AOF, so that it may be flushed and restarted."""
    server = RedisServer(appendonly=True)
    yield server
    server.close()


async def test_reconciler_requeues_jobs_redis_lost(
    settings: Settings, private_redis: RedisServer, fake_llm: FakeLLM, unique: str
) -> None:
    s = with_changes(
        settings,
        redis_url=private_redis.url,
        generation_delay_seconds=2.0,
        reconcile_interval_seconds=0.5,
        reconcile_grace_seconds=0.2,
    )
    marker = f"[flushed-{unique}]"
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x {marker}")
        # Redis loses everything before the job's time (FLUSHALL on our own server).
        r = aioredis.from_url(private_redis.url)
        await r.flushall()
        await r.aclose()
        assert await api.services.queue.state(queued["jobId"]) == "unknown"
        async with running_worker(s):
            job = await wait_for_status(
                client, queued["jobId"], user["headers"], {"completed", "failed"}
            )
    assert job["status"] == "completed"
    assert len(fake_llm.calls_for(marker)) == 1


async def test_reconciler_fails_jobs_past_max_age(
    settings: Settings, private_redis: RedisServer, unique: str
) -> None:
    s = with_changes(
        settings,
        redis_url=private_redis.url,
        generation_delay_seconds=0.0,
        reconcile_interval_seconds=0.5,
        reconcile_grace_seconds=0.0,
        reconcile_max_age_seconds=0.5,
    )
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x [old-{unique}]")
        await api.services.queue.remove(queued["jobId"])
        await asyncio.sleep(1.0)
        async with running_worker(s):
            job = await wait_for_status(
                client, queued["jobId"], user["headers"], {"completed", "failed"}
            )
    assert job["status"] == "failed"
    assert "could not be processed in time" in job["error"]


async def test_redis_restart_keeps_delayed_jobs_and_clients_reconnect(
    settings: Settings, private_redis: RedisServer, fake_llm: FakeLLM, unique: str
) -> None:
    s = with_changes(
        settings,
        redis_url=private_redis.url,
        generation_delay_seconds=4.0,
        queue_timeout_seconds=1.0,
    )
    marker = f"[restart-{unique}]"
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=15) as client:
        user = await register(client)
        async with running_worker(s):
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
            await asyncio.sleep(1.0)
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
    env = {**fault_env, "SHUTDOWN_GRACE_SECONDS": "1"}
    _, worker, url = await start_system(env, processes)
    marker = f"[grace-{unique}]"
    fake_llm.script(marker, [Reply(delay=4.0)])
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x {marker}")
        await _wait_calls(fake_llm, marker, 1)
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.proc.wait, 20)
        assert code == 0, worker.output()
        assert time.monotonic() - started < 3.5  # did not wait for the 4 s call
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


async def test_store_down_keeps_llm_result_and_api_answers_503(
    settings: Settings, fake_llm: FakeLLM, unique: str
) -> None:
    mongo = MongoServer()
    try:
        s = with_changes(
            settings,
            mongo_uri=mongo.uri,
            generation_delay_seconds=0.0,
            store_write_retry_seconds=0.5,
            job_backoff_ms=1500,
        )
        marker = f"[storedown-{unique}]"
        fake_llm.script(marker, [Reply(delay=1.5)])
        async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            user = await register(client)
            async with running_worker(s):
                queued = await queue(client, user["headers"], f"x {marker}")
                await _wait_calls(fake_llm, marker, 1)
                await asyncio.to_thread(mongo.stop)  # the database goes away mid-call
                r = await client.get(
                    f"/generate-content/{queued['jobId']}", headers=user["headers"]
                )
                assert r.status_code == 503
                assert r.json()["error"] == "store_unavailable"
                await asyncio.sleep(1.5)
                await asyncio.to_thread(mongo.start)
                job = await wait_for_status(
                    client, queued["jobId"], user["headers"], {"completed", "failed"}, 40
                )
        assert job["status"] == "completed"
        assert job["attempts"] == 2  # the first attempt could not store its result
        assert len(fake_llm.calls_for(marker)) == 1  # the kept result was stored, not regenerated
    finally:
        mongo.close()
