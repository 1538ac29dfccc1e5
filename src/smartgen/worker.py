"""The worker process: bullmq Worker, clients opened in the loop, graceful stop on signals."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import socket
from typing import Any

import bullmq

from smartgen import heap
from smartgen.config import Settings
from smartgen.generation.reconcile import Reconciler
from smartgen.generation.tasks import GenerationTask, backoff_strategy
from smartgen.llm.client import ChatClient
from smartgen.llm.offline import OFFLINE_MODEL, OfflineWriter
from smartgen.queue import GenerationQueue, api_redis, worker_connection
from smartgen.realtime import close_manager, worker_publisher
from smartgen.store import open_store

log = logging.getLogger(__name__)


# The next job's data fetched by the completion of the job this task processes.
_fetched: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "smartgen_fetched", default=None
)


class Worker(bullmq.Worker):  # type: ignore[misc]
    """bullmq's Worker, completing a job and taking the next one in one Lua script call.

    Node's BullMQ does so (`moveToFinished` with fetchNext, one round trip per job on a
    busy queue); bullmq for Python completes with `fetch_next=False` and then runs
    `moveToActive` for the next job in a task of its own: a second script call and a
    second turn of its loop per job. Here each `processJob` task asks for the next job as
    it completes its own and returns it, and bullmq's loop processes a task's returned job
    as it does one from `getNextJob`. Not while closing or paused. bullmq's own
    `processJob` runs unchanged; only its completion call fetches (pinned to the bullmq
    versions this was checked against, see pyproject.toml)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        complete = self.backend.moveToCompleted

        async def complete_and_fetch(
            job: Any, value: Any, remove: Any, token: str, fetch_next: bool = True
        ) -> Any:
            # bullmq's processJob passes fetch_next=False; whether to fetch is decided here.
            fetched = _fetched.get()
            fetch = fetched is not None and not (self.closing or self.paused)
            outcome = await complete(job, value, remove, token, fetch_next=fetch)
            if fetch and fetched is not None:
                fetched.append((outcome or {}).get("result"))
            return outcome

        self.backend.moveToCompleted = complete_and_fetch

    async def processJob(self, job: Any, token: str) -> Any:
        fetched: list[Any] = []
        _fetched.set(fetched)  # this task's own context (bullmq runs each in a task)
        await super().processJob(job, token)
        if not fetched or not fetched[0]:
            return None
        job_data, job_id, limit_until, delay_until = fetched[0]
        return await self.nextJobFromJobData(
            job_data, job_id, limit_until or 0, delay_until or 0, token
        )


def _log_failed(job: Any, err: Exception) -> None:
    # Listeners are synchronous and must never raise.
    with contextlib.suppress(Exception):
        log.info("job %s attempt %s: %s", job.id, job.attemptsMade, str(err)[:200])


async def run_worker(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    init_store: bool = True,
    settle_heap: bool = False,
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT), then close gracefully. The store's
    schema/indexes are created first unless the caller already did (`init_store=False`);
    with `settle_heap`, start-up objects are frozen for the garbage collector (`heap.py`)."""
    settings.require_llm_credentials()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    store = open_store(settings)
    if init_store:
        await store.init()
    llm: ChatClient | OfflineWriter
    if settings.use_offline_llm:
        log.warning(
            "no OPENROUTER_KEY and no local BASE_URL: writing offline drafts (model %s)",
            OFFLINE_MODEL,
        )
        llm = OfflineWriter()
    else:
        llm = ChatClient(settings, max_connections=settings.worker_concurrency)
    publisher, manager = worker_publisher(settings)
    publisher.start()
    task = GenerationTask(store=store, llm=llm, notifier=publisher, settings=settings)
    producer = GenerationQueue(settings, api_redis(settings))
    reconciler = Reconciler(store=store, queue=producer, notifier=publisher, settings=settings)
    stop_reconciler = asyncio.Event()
    reconciling: asyncio.Task[None] | None = None
    worker = Worker(
        settings.queue_name,
        task,
        {
            "connection": worker_connection(settings),
            "prefix": settings.queue_prefix,
            "concurrency": settings.worker_concurrency,
            "lockDuration": settings.lock_duration_ms,
            "stalledInterval": settings.stalled_interval_ms,
            "maxStalledCount": 2,
            "settings": {"backoffStrategy": backoff_strategy(settings)},
            "name": f"smartgen-{socket.gethostname()}-{os.getpid()}",
            "autorun": False,
        },
    )
    worker.on("failed", _log_failed)
    try:
        # Learn the Redis version before the first wait: without it the blocking
        # connection rounds every wait up to whole seconds (jobs start up to 1 s late).
        await worker.blockingRedisConnection.getRedisVersion()
        await worker.redisConnection.getRedisVersion()
        runner = asyncio.ensure_future(worker.run())
        reconciling = asyncio.create_task(reconciler.run_forever(stop_reconciler))
        if settle_heap:
            heap.settle_heap()
        log.info(
            "worker ready: queue %r on %s, concurrency %d, model %s",
            settings.queue_name,
            settings.redis_display,
            settings.worker_concurrency,
            llm.model,
        )
        await stop.wait()
        stop_reconciler.set()
        if reconciling is not None:
            await reconciling
        log.info(
            "worker stopping: finishing running jobs (grace %.0fs)", settings.shutdown_grace_seconds
        )
        closing = asyncio.ensure_future(worker.close())
        try:
            await asyncio.wait_for(asyncio.shield(closing), settings.shutdown_grace_seconds)
        except TimeoutError:
            log.warning("grace period over: unfinished jobs go back to the queue")
            await worker.close(force=True)
            with contextlib.suppress(asyncio.CancelledError):
                await closing
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(runner, 5)
    finally:
        stop_reconciler.set()
        if reconciling is not None and not reconciling.done():
            reconciling.cancel()
        await producer.close()
        await publisher.close()
        await close_manager(manager)
        await llm.close()
        await store.close()
        log.info("worker stopped")
