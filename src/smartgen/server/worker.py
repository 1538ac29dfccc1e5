"""The worker process: clients opened in the loop, the generation task on the queue, the
reconciler beside it, a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from smartgen.batches.runner import BatchRunner
from smartgen.config import Settings
from smartgen.generation.reconcile import Reconciler
from smartgen.generation.tasks import GenerationTask
from smartgen.llm.client import ChatClient
from smartgen.llm.metered import MeteredGenerator
from smartgen.llm.offline import OFFLINE_MODEL, OfflineWriter
from smartgen.metrics.jobs import MeteredNotifier
from smartgen.models import JobStatus
from smartgen.queue.budgets import RedisBudgets
from smartgen.queue.cancellations import CancelListener
from smartgen.queue.liveness import Heartbeat
from smartgen.queue.producer import GenerationQueue, cancel_channel
from smartgen.queue.runner import QueueRunner
from smartgen.queue.timings import RedisTimings
from smartgen.queue.webhooks import BullWebhookQueue, webhook_queue_name
from smartgen.realtime.bus import close_manager, event_log, worker_publisher
from smartgen.realtime.live_text import RedisLiveText
from smartgen.redis_clients import redis_client
from smartgen.server import heap
from smartgen.server.worker_metrics import MetricsServer, serve_worker_metrics
from smartgen.store import open_store
from smartgen.store.base import Store
from smartgen.webhooks.endpoints import CachedEndpoints
from smartgen.webhooks.notifier import WebhookNotifier
from smartgen.webhooks.sender import WebhookSender
from smartgen.webhooks.tasks import WebhookTask

log = logging.getLogger("smartgen.worker")


def open_model(settings: Settings) -> ChatClient | OfflineWriter:
    if settings.use_offline_llm:
        log.warning(
            "no OPENROUTER_KEY and no local BASE_URL: writing offline drafts (model %s)",
            OFFLINE_MODEL,
        )
        return OfflineWriter()
    return ChatClient(settings, max_connections=settings.worker_concurrency)


def cancelled_in(store: Store) -> Callable[[str], Awaitable[bool]]:
    """The cancel listener's check: whether the store holds the job as cancelled."""

    async def is_cancelled(job_id: str) -> bool:
        job = await store.jobs.get(job_id)
        return job is not None and job.status == JobStatus.cancelled

    return is_cancelled


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
    llm = MeteredGenerator(open_model(settings))
    redis = redis_client(settings, "request")
    publisher, manager = worker_publisher(settings, event_log(settings, redis))
    publisher.start()
    webhook_queue = BullWebhookQueue(settings, redis_client(settings, "request"))
    # Job metrics from the job's own announcements; its end announced to its webhooks.
    notifier = WebhookNotifier(
        MeteredNotifier(publisher),
        store=store,
        queue=webhook_queue,
        endpoints=CachedEndpoints(store, webhook_queue),
    )
    signals = redis_client(settings, "pubsub")
    cancels = CancelListener(signals, cancel_channel(settings), is_cancelled=cancelled_in(store))
    cancels.start()
    namespace = f"{settings.queue_prefix}:smartgen"
    budgets = RedisBudgets(redis, namespace)
    producer = GenerationQueue(settings, redis)
    turns = BatchRunner(
        store=store,
        queue=producer,
        notifier=notifier,
        settings=settings,
        webhook_queue=webhook_queue,
    )
    task = GenerationTask(
        store=store,
        llm=llm,
        notifier=notifier,
        settings=settings,
        live=RedisLiveText(redis, namespace),
        cancellations=cancels,
        timings=RedisTimings(redis, namespace),
        budgets=budgets,
        turns=turns,
    )
    reconciler = Reconciler(
        store=store,
        queue=producer,
        notifier=notifier,
        settings=settings,
        budgets=budgets,
        turns=turns,
        sweep=turns.sweep,
    )
    stop_reconciler = asyncio.Event()
    reconciling: asyncio.Task[None] | None = None
    runner = QueueRunner(settings, task)
    sender = WebhookSender(
        timeout=settings.webhook_timeout_seconds,
        allow_http=settings.webhook_allow_http,
        allow_private=settings.webhook_allow_private_networks,
    )
    webhook_task = WebhookTask(
        store=store, sender=sender, queue=webhook_queue, notifier=notifier, settings=settings
    )
    webhook_runner = QueueRunner(
        settings,
        webhook_task,
        queue_name=webhook_queue_name(settings),
        concurrency=settings.webhook_concurrency,
    )
    sweeping: asyncio.Task[None] | None = None
    heartbeat = Heartbeat(settings, runner.name, reconciler.take_over)
    metrics: MetricsServer | None = None
    try:
        metrics = await serve_worker_metrics(settings)
        await runner.start()
        await webhook_runner.start()
        heartbeat.start()
        reconciling = asyncio.create_task(reconciler.run_forever(stop_reconciler))
        sweeping = asyncio.create_task(webhook_task.sweep_forever(stop_reconciler))
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
        await reconciling
        await sweeping
        log.info(
            "worker stopping: finishing running jobs (grace %.0fs)", settings.shutdown_grace_seconds
        )
        # Both queues at once; a webhook delivery cut short is sent again (at least once,
        # with the same webhook-id).
        finished, _ = await asyncio.gather(
            runner.stop(settings.shutdown_grace_seconds),
            webhook_runner.stop(settings.webhook_timeout_seconds),
        )
        # Jobs left running are another worker's to take over once this one is silent.
        await heartbeat.stop(leave=finished)
    finally:
        await heartbeat.stop(leave=False)
        stop_reconciler.set()
        if reconciling is not None and not reconciling.done():
            reconciling.cancel()
        if sweeping is not None and not sweeping.done():
            sweeping.cancel()
        if webhook_runner.running:
            await webhook_runner.stop(0.1)
        await sender.close()
        await webhook_queue.close()  # and its Redis client
        if metrics is not None:
            await metrics.close()
        await cancels.close()
        await signals.aclose()
        await publisher.close()  # numbers its last events in the log: before the client goes
        await close_manager(manager)
        await producer.close()  # and its Redis client (bullmq closes it)
        await llm.close()
        await store.close()
        log.info("worker stopped")


def run_worker_process(settings: Settings) -> int:
    """`smartgen worker`: the store checked first, then the worker on uvloop."""
    from smartgen.server.startup import preflight_store

    settings.require_llm_credentials()
    preflight_store(settings)
    import uvloop  # ships with uvicorn[standard]

    uvloop.run(run_worker(settings, init_store=False, settle_heap=True))
    return 0
