"""The bullmq queue: connection options, the producer side, and the job options.

Jobs are wire-compatible with Node's BullMQ (queue `content-generation`, job name
`generate`, bullmq job id = our `jobId`), so a Node producer or worker can share it.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from bullmq import Queue
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from smartgen.batching import Coalescer
from smartgen.config import Settings
from smartgen.errors import ServiceUnavailable
from smartgen.store.base import Job

JOB_NAME = "generate"
BACKOFF_TYPE = "smartgen"  # exponential with jitter, and never sooner than Retry-After


def redis_kwargs(settings: Settings) -> dict[str, Any]:
    """redis-py keyword arguments for `settings.redis_connection_url`."""
    parts = urlsplit(settings.redis_connection_url)
    db_text = parts.path.lstrip("/")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "db": int(db_text) if db_text.isdigit() else 0,
        "ssl": parts.scheme == "rediss",
    }


def worker_connection(settings: Settings) -> dict[str, Any]:
    """Options for bullmq's Worker connections.

    redis-py 8 defaults `socket_timeout` to 5 s, which breaks the worker's blocking
    BZPOPMIN waits (a job due in 5 s started 50 s late): it must be None here.
    """
    return {
        **redis_kwargs(settings),
        "socket_timeout": None,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }


def api_redis(settings: Settings) -> aioredis.Redis:
    """A pooled client for the API: short timeouts, few retries, so a dead Redis means a
    quick 503 rather than a request hanging for minutes."""
    return aioredis.Redis(
        **redis_kwargs(settings),
        decode_responses=True,
        socket_timeout=settings.queue_timeout_seconds,
        socket_connect_timeout=min(2.0, settings.queue_timeout_seconds),
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        health_check_interval=30,
        max_connections=256,
    )


def job_data(job: Job) -> dict[str, str]:
    """The queue message of a job: ids and what to generate (the worker reads the rest from
    the store)."""
    return {
        "jobId": job.job_id,
        "userId": job.user_id,
        "contentType": job.content_type,
        "prompt": job.prompt,
    }


def job_options(settings: Settings, job_id: str, delay_ms: int) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "delay": max(0, delay_ms),
        "attempts": settings.job_attempts,
        "backoff": {"type": BACKOFF_TYPE, "delay": settings.job_backoff_ms},
        "removeOnComplete": {"count": settings.keep_completed_jobs},
        "removeOnFail": {"count": settings.keep_failed_jobs},
    }


def backoff_delay_ms(
    attempts_made: int, base_ms: int, cap_ms: int, retry_after_ms: int | None
) -> int:
    """Exponential backoff with full jitter in [0.5, 1.0] of the step, capped, and never
    sooner than the server's `Retry-After`."""
    step = min(cap_ms, base_ms * 2 ** max(0, attempts_made - 1))
    delay = int(step * random.uniform(0.5, 1.0))
    if retry_after_ms:
        delay = max(delay, retry_after_ms)
    return max(1, delay)


class GenerationQueue:
    """The producer side, used by the API (and the reconciler).

    Concurrent adds go out together (`batching.Coalescer`): one add alone is one script
    call, as before; adds made while two are in flight wait for one of them and then go in
    one MULTI/EXEC pipeline (`Queue.addBulk`), one round trip for the lot.
    """

    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self._settings = settings
        self._client = client
        self._queue = Queue(
            settings.queue_name, {"connection": client, "prefix": settings.queue_prefix}
        )
        self._timeout = settings.queue_timeout_seconds
        self.adds: Coalescer[dict[str, Any], None] = Coalescer(
            self._add, concurrency=2, max_batch=64
        )

    async def enqueue(self, *, job_id: str, data: dict[str, Any], delay_ms: int) -> None:
        """Add the job; idempotent for the same `job_id`. `ServiceUnavailable` when Redis
        does not answer in time."""
        opts = job_options(self._settings, job_id, delay_ms)
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
            raise ServiceUnavailable(
                "The job queue (Redis) is unavailable; the job was not queued, try again shortly",
                code="queue_unavailable",
            ) from exc
        return [None] * len(jobs)

    async def remove(self, job_id: str) -> None:
        await asyncio.wait_for(self._queue.remove(job_id), self._timeout)

    async def state(self, job_id: str) -> str:
        """bullmq's state for the job: delayed, waiting, active, completed, failed, unknown."""
        result = await asyncio.wait_for(self._queue.getJobState(job_id), self._timeout)
        return str(result)

    async def close(self) -> None:
        await self.adds.drain()
        await self._queue.close()
