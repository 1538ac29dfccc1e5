"""Running a task on bullmq: the worker's options, each delivery handed to the task as a
`ports.Delivery`, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import bullmq
from bullmq.custom_errors import DelayedError, UnrecoverableError

from smartgen.config import Settings
from smartgen.kit import logcontext
from smartgen.ports import Delivery, GiveUp, RunLater
from smartgen.queue.fetch_next import FetchNextWorker
from smartgen.queue.overview import worker_name
from smartgen.queue.retry import backoff_strategy
from smartgen.redis_clients import close_pool, redis_options

log = logging.getLogger(__name__)

Task = Callable[[Delivery], Awaitable[str]]


def _delivery(job: Any, worker: str) -> Delivery:
    data: dict[str, Any] = job.data if isinstance(job.data, dict) else {}

    async def keep(updated: dict[str, Any]) -> None:
        await job.updateData(updated)

    return Delivery(
        message_id=str(job.id),
        data=data,
        attempt=int(job.attemptsMade) + 1,
        attempts=int(job.opts.get("attempts") or 1),
        keep=keep,
        worker=worker,
    )


def _log_failed(job: Any, err: Exception) -> None:
    # Listeners are synchronous and must never raise.
    with contextlib.suppress(Exception):
        log.info("job %s attempt %s: %s", job.id, job.attemptsMade, str(err)[:200])


class QueueRunner:
    """One bullmq worker on the generation queue, running `task` for each delivery.
    A task's `GiveUp` ends the job's attempts; `RunLater` moves the message to its new time
    without using an attempt; `RetryLater` (or any other error) lets bullmq retry it with
    `queue.retry`'s backoff."""

    def __init__(
        self,
        settings: Settings,
        task: Task,
        *,
        queue_name: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        """On the generation queue, unless `queue_name` (with its own `concurrency`)."""
        self.settings = settings
        self.name = worker_name(settings, socket.gethostname(), os.getpid())

        async def process(job: Any, token: str) -> str:
            delivery = _delivery(job, self.name)
            # This delivery's log lines (and its model call) name its job, and the request
            # that queued it.
            job_token = logcontext.job_id.set(str(delivery.data.get("jobId") or job.id))
            request_token = logcontext.request_id.set(
                logcontext.sane_request_id(delivery.data.get("requestId"))
            )
            try:
                return await task(delivery)
            except GiveUp as exc:
                raise UnrecoverableError(str(exc)) from exc
            except RunLater as later:
                # bullmq's way: move the active message to delayed, then say so.
                await job.moveToDelayed(round(later.at.timestamp() * 1000), token)
                raise DelayedError() from None
            finally:
                logcontext.request_id.reset(request_token)
                logcontext.job_id.reset(job_token)

        # Every queue's idle slots stay quiet with it (the webhook queue's too: with
        # bullmq's own loop its 20 idle slots ran 4 empty script calls a second).
        worker_class = FetchNextWorker if settings.worker_fetch_next else bullmq.Worker
        self.worker = worker_class(
            queue_name or settings.queue_name,
            process,
            {
                "connection": redis_options(settings, "blocking"),
                "prefix": settings.queue_prefix,
                "concurrency": concurrency or settings.worker_concurrency,
                "lockDuration": settings.lock_duration_ms,
                "stalledInterval": settings.stalled_interval_ms,
                "maxStalledCount": 2,
                "settings": {"backoffStrategy": backoff_strategy(settings)},
                "name": self.name,
                "autorun": False,
            },
        )
        self.worker.on("failed", _log_failed)
        self._running: asyncio.Future[Any] | None = None
        self._stopped = False

    @property
    def running(self) -> bool:
        """Started, and not stopped yet."""
        return self._running is not None and not self._stopped

    async def start(self) -> None:
        # Learn the Redis version before the first wait: without it the blocking
        # connection rounds every wait up to whole seconds (jobs start up to 1 s late).
        await self.worker.blockingRedisConnection.getRedisVersion()
        await self.worker.redisConnection.getRedisVersion()
        self._running = asyncio.ensure_future(self.worker.run())

    async def stop(self, grace: float) -> bool:
        """Take no new jobs; let running ones finish within `grace` seconds, after which
        they go back to the queue when their lock expires (or this worker's silence is
        noticed: `liveness`). True when every job it took has finished."""
        self._stopped = True
        finished = True
        closing = asyncio.ensure_future(self.worker.close())
        try:
            await asyncio.wait_for(asyncio.shield(closing), grace)
        except TimeoutError:
            finished = False
            log.warning("grace period over: unfinished jobs go back to the queue")
            await self.worker.close(force=True)
            with contextlib.suppress(asyncio.CancelledError):
                await closing
        if self._running is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._running, 5)
        # bullmq closed its clients; a pool they were given (Sentinel) is closed here.
        for connection in (self.worker.redisConnection, self.worker.blockingRedisConnection):
            if connection is not None:
                await close_pool(connection.conn)
        return finished
