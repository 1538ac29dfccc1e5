"""queue/fetch_next.py keeps an idle worker's free slots quiet: a job arriving at an idle
worker of concurrency 50 costs a handful of Redis script calls, not one per free slot.
Real Redis (its own command counts), a real worker and API, the fake model server."""

from __future__ import annotations

import asyncio
from typing import Any

import bullmq
import httpx
import pytest
import redis.asyncio as aioredis

from smartgen.config import Settings
from smartgen.queue.fetch_next import FetchNextWorker
from smartgen.redis_clients import redis_options
from tests.conftest import register, wait_for_status
from tests.test_worker import queue, running_worker


async def _script_calls(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if name in ("cmdstat_evalsha", "cmdstat_eval")
    )


@pytest.mark.parametrize("fetch_next", [True, False], ids=["fetch-next", "stock"])
async def test_jobs_trickling_into_an_idle_worker(
    client: httpx.AsyncClient, settings: Settings, redis_server, unique: str, fetch_next: bool
) -> None:  # type: ignore[no-untyped-def]
    s = settings.model_copy(
        update={
            "generation_delay_seconds": 0,
            "worker_concurrency": 50,
            "worker_fetch_next": fetch_next,
            "worker_heartbeat_seconds": 0,  # only the job's own calls are counted
        }
    )
    r = aioredis.from_url(redis_server.url)
    user = await register(client)
    async with running_worker(s):
        for i in range(2):  # warm up: scripts loaded, the worker drained and waiting
            job = await queue(client, user["headers"], f"warm {i} [{unique}]")
            await wait_for_status(client, job["jobId"], user["headers"], {"completed"})
        before = await _script_calls(r)
        jobs = 5
        for i in range(jobs):
            job = await queue(client, user["headers"], f"trickle {i} [{unique}]")
            done = await wait_for_status(client, job["jobId"], user["headers"], {"completed"})
            assert done["status"] == "completed"
        per_job = (await _script_calls(r) - before) / jobs
    await r.aclose()
    print(f"script calls per job ({'fetch-next' if fetch_next else 'stock'}): {per_job:.1f}")
    if fetch_next:
        # Per job: the rate limit, the add, its events in the log (queued, processing,
        # completed), taking it and finishing it, and one empty look for a next job.
        assert per_job <= 12, per_job


async def _one_waiting_job(redis_url: str, name: str) -> tuple[bullmq.Queue, str]:
    q = bullmq.Queue(name, {"connection": redis_url})
    job = await q.add("generate", {"n": 1})
    return q, str(job.id)


async def _state(q: bullmq.Queue, job_id: str) -> str:
    job = await bullmq.Job.fromId(q, job_id)
    return str(await job.getState())


async def test_a_closing_worker_takes_no_job_and_hands_back_one_it_took(
    redis_server, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The shutdown race of `fetch_next`: a slot woken by `close` asks for nothing, and a job
    taken as `close` begins goes back to wait (not left active under a lock nobody renews)."""
    name = f"closing-{unique}"
    q, job_id = await _one_waiting_job(redis_server.url, name)
    ran: list[str] = []

    async def process(job: Any, token: str) -> str:
        ran.append(str(job.id))
        return "done"

    opts = {"connection": redis_server.url, "autorun": False, "concurrency": 2}
    closing = FetchNextWorker(name, process, opts)
    try:
        # A slot woken by close: nothing is taken.
        closing.closing = True
        assert await closing.getNextJob("t:1") is None
        assert await _state(q, job_id) == "waiting"

        # A fetch that was under way when close began: the job it took is handed back.
        stock_get_next = bullmq.Worker.getNextJob

        async def close_begins_meanwhile(self: Any, token: str) -> Any:
            job = await stock_get_next(self, token)
            self.closing = True
            return job

        closing.closing = False
        monkeypatch.setattr(bullmq.Worker, "getNextJob", close_begins_meanwhile)
        assert await closing.getNextJob("t:2") is None
        monkeypatch.undo()
        assert await _state(q, job_id) == "waiting"
        assert await q.client.exists(f"bull:{name}:{job_id}:lock") == 0
    finally:
        await closing.close()

    # The next worker runs it at once, on its first attempt.
    successor = FetchNextWorker(name, process, {**opts, "autorun": True})
    try:
        for _ in range(200):
            if ran:
                break
            await asyncio.sleep(0.05)
        assert ran == [job_id]
        job = await bullmq.Job.fromId(q, job_id)
        assert job.attemptsMade == 1
    finally:
        await successor.close()
        await q.obliterate({"force": True})
        await q.close()


async def test_many_slots_finishing_out_of_order_each_job_once(
    settings: Settings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop (`FetchNextWorker.run`) learns which tasks finished from their own callbacks,
    never through bullmq's `getCompleted` (an `asyncio.wait` over every task in flight):
    100 slots whose jobs end in another order than they began, one that fails, and a
    close in the middle of the work; every job runs once and ends completed or failed.
    The workers' connections are the worker's own (`redis_options(..., "blocking")`: no
    socket timeout under the queue's blocking wait), each step bounded."""
    name = f"slots-{unique}"
    connection = redis_options(settings, "blocking")
    q = bullmq.Queue(name, {"connection": settings.redis_connection_url})
    total = 300
    await q.addBulk(
        [{"name": "generate", "data": {"n": n}, "opts": {"attempts": 1}} for n in range(total)]
    )

    def no_wait_over_all(*_: Any) -> Any:
        raise AssertionError("bullmq's getCompleted was used")

    monkeypatch.setattr(bullmq.worker, "getCompleted", no_wait_over_all)
    ran: list[int] = []

    async def process(job: Any, token: str) -> str:
        n = int(job.data["n"])
        await asyncio.sleep((n * 7 % 10) / 1000)  # ends out of order
        ran.append(n)
        if n == 13:
            raise ValueError("this one fails")
        return "done"

    opts = {"connection": connection, "autorun": False, "concurrency": 100}
    worker = FetchNextWorker(name, process, opts)
    running = asyncio.ensure_future(worker.run())
    try:
        for _ in range(400):
            if len(ran) >= total // 2:
                break
            await asyncio.sleep(0.01)
        # In the middle: what runs ends, nothing new starts.
        await asyncio.wait_for(worker.close(), 20)
        await asyncio.wait_for(running, 10)
        stopped_at = len(ran)
        assert total // 2 <= stopped_at < total
        assert sorted(ran) == sorted(set(ran))  # none twice

        successor = FetchNextWorker(name, process, {**opts, "autorun": True})
        try:
            for _ in range(1000):
                if len(ran) == total:
                    break
                await asyncio.sleep(0.01)
        finally:
            await asyncio.wait_for(successor.close(), 20)
        assert sorted(ran) == list(range(total))  # each once, the rest by the successor
        counts = await q.getJobCounts("completed", "failed", "active", "wait", "delayed")
        assert counts == {"completed": total - 1, "failed": 1, "active": 0, "wait": 0, "delayed": 0}
    finally:
        if not running.done():
            running.cancel()
        await q.obliterate({"force": True})
        await q.close()
