"""The producer side of the generation queue, used by the API and the worker's reconciler.

Jobs are wire-compatible with Node's BullMQ (queue `content-generation`, job name
`generate`, bullmq job id = our `jobId`), so a Node producer or worker can share it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from bullmq import Queue
from redis.exceptions import RedisError

from smartgen.config import Settings
from smartgen.errors import QueueUnavailable
from smartgen.kit import logcontext
from smartgen.kit.batching import Coalescer
from smartgen.queue.retry import BACKOFF_TYPE

T = TypeVar("T")
JOB_NAME = "generate"


def cancel_channel(settings: Settings) -> str:
    """Where cancels of running jobs are announced to the workers of one deployment."""
    return f"{settings.queue_prefix}:{settings.queue_name}:cancel"


def job_options(settings: Settings, job_id: str, delay_ms: int) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "delay": max(0, delay_ms),
        "attempts": settings.job_attempts,
        "backoff": {"type": BACKOFF_TYPE, "delay": settings.job_backoff_ms},
        "removeOnComplete": {"count": settings.keep_completed_jobs},
        "removeOnFail": {"count": settings.keep_failed_jobs},
    }


class GenerationQueue:
    """`ports.JobQueue` on bullmq. Concurrent adds go out together (`kit.batching`): one
    add alone is one script call; adds made while two are in flight wait for one of them
    and then go in one MULTI/EXEC pipeline (`Queue.addBulk`), one round trip for the lot."""

    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self._settings = settings
        self._client = client
        self._queue = Queue(
            settings.queue_name, {"connection": client, "prefix": settings.queue_prefix}
        )
        self._timeout = settings.queue_timeout_seconds
        self.adds: Coalescer[dict[str, Any], None] = Coalescer(self._add)

    async def enqueue(
        self, *, job_id: str, data: dict[str, Any], delay_ms: int, message_id: str | None = None
    ) -> None:
        """Add the job; idempotent for the same `job_id` (or `message_id`).
        `ServiceUnavailable` when Redis does not answer in time."""
        opts = job_options(self._settings, message_id or job_id, delay_ms)
        request_id = logcontext.request_id.get()
        if request_id:  # the worker's log lines for the job name the request that queued it
            data = {**data, "requestId": request_id}
        await self.adds.submit({"name": JOB_NAME, "data": data, "opts": opts})

    async def _add(self, jobs: list[dict[str, Any]]) -> list[None]:
        try:
            # asyncio.timeout rather than wait_for: no extra task per flush.
            async with asyncio.timeout(self._timeout):
                if len(jobs) == 1:
                    await self._queue.add(JOB_NAME, jobs[0]["data"], jobs[0]["opts"])
                else:
                    await self._queue.addBulk(jobs)
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueUnavailable(
                "The job queue (Redis) is unavailable; the job was not queued, try again shortly"
            ) from exc
        return [None] * len(jobs)

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueUnavailable() from exc

    async def remove(self, job_id: str) -> bool:
        # bullmq's removeJob answers 0 when the job is locked by a worker (active), else 1.
        return bool(await self._call(self._queue.remove(job_id)))

    async def reschedule(self, *, job_id: str, data: dict[str, Any], delay_ms: int) -> None:
        """Remove the entry and add it again with the new delay (Queue.remove and add are
        bullmq's public calls; this bullmq has no changeDelay). An entry a worker holds is
        left alone: that delivery finds the job not due yet in the store and moves itself
        to the new time (`ports.RunLater`)."""
        if await self.remove(job_id):
            await self.enqueue(job_id=job_id, data=data, delay_ms=delay_ms)

    async def cancel(self, job_id: str) -> None:
        """Drop a waiting or delayed entry, and tell every worker (one holds the job if it
        runs) through Redis: `cancellations.CancelListener` stops its model call."""
        await self.remove(job_id)
        await self._call(self._client.publish(cancel_channel(self._settings), job_id))

    async def state(self, job_id: str) -> str:
        """bullmq's state for the job: delayed, waiting, active, completed, failed, unknown."""
        return str(await self._call(self._queue.getJobState(job_id)))

    async def close(self) -> None:
        await self.adds.drain()
        await self._queue.close()
