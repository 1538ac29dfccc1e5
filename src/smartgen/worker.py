"""The worker process: bullmq Worker, clients opened in the loop, graceful stop on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any

from bullmq import Worker

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
