"""queue/fetch_next.py keeps an idle worker's free slots quiet: a job arriving at an idle
worker of concurrency 50 costs a handful of Redis script calls, not one per free slot.
Real Redis (its own command counts), a real worker and API, the fake model server."""

from __future__ import annotations

import httpx
import pytest
import redis.asyncio as aioredis

from smartgen.config import Settings
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
