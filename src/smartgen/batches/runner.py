"""A batch's turns: which of its waiting jobs go into the queue, and when it is done.

A batch lets at most BATCH_CONCURRENCY of its jobs into the queue at once; the rest stay
`queued` with `batchHeld` (not in the queue, not due for the reconciler). Whenever one of
its jobs reaches a final state (the worker's completion or failure, a cancel, the
reconciler's failure), `next_turns` runs:

1. take the batch's lock in the store (one filler at a time per batch; a busy lock is
   waited for briefly: its holder counted before this job ended, so this one must count
   again after it);
2. count its jobs in the queue (`queued`/`processing`, not waiting) and claim that many
   fewer than BATCH_CONCURRENCY of its waiting rows, lowest row first (`claim_next`: one
   conditional write each, so a row is claimed once);
3. queue each claimed job (store first, queue second: a claimed job the queue refused is
   due for the reconciler like any queued job, which queues it again);
4. with nothing left unfinished, finish the batch (once: a conditional write) and
   announce it (`batch_completed`).

Counting and claiming under the lock keeps a batch at BATCH_CONCURRENCY at most. A filler
that has held the lock for half of LOCK_SECONDS renews it before its next claim, and only
while it is still its own (`renew`: never taken over nor given back since): a filler that
stalled past its lock while another filled the batch stops there instead of claiming what
it counted before. What can still pass the bound: a single claim that stalls in the
store longer than half the lock and lands after another filler took over (one job), and
"run now" on a waiting job (the owner's choice: it starts at once, out of turn).
Nothing is lost to a crash: a job that ended while its worker died is announced again by
its next delivery, which calls `next_turns`; and the worker's periodic pass (`sweep`) runs
`next_turns` for every running batch.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import timedelta
from typing import Any

from smartgen.config import Settings
from smartgen.errors import AppError
from smartgen.generation.service import queue_message
from smartgen.kit.times import iso_ms, utcnow
from smartgen.models import Batch, BatchCounts
from smartgen.ports import JobQueue, Notifier, WebhookQueue
from smartgen.store.base import Store
from smartgen.webhooks import service as webhooks

log = logging.getLogger(__name__)

LOCK_SECONDS = 30.0
LOCK_WAIT_SECONDS = 5.0
PROGRESS_INTERVAL_SECONDS = 1.0
SWEEP_LIMIT = 1000


def counts_payload(batch: Batch, counts: BatchCounts) -> dict[str, Any]:
    """What `batch_progress`, `batch_completed` and GET /batches/{batchId} say of progress."""
    finished = counts.finished
    return {
        "batchId": batch.batch_id,
        "total": batch.total,
        "accepted": batch.accepted,
        "rejected": len(batch.rejected),
        "counts": {
            "waiting": counts.waiting,
            "queued": counts.by_status.get("queued", 0) - counts.waiting,
            "processing": counts.by_status.get("processing", 0),
            "completed": counts.by_status.get("completed", 0),
            "failed": counts.by_status.get("failed", 0),
            "cancelled": counts.by_status.get("cancelled", 0),
        },
        "progress": round(finished / batch.accepted, 4) if batch.accepted else 1.0,
        "costUsd": round(counts.cost, 9),
    }


async def announce_batch_completed(
    notifier: Notifier,
    batch: Batch,
    counts: BatchCounts,
    *,
    store: Store | None = None,
    webhook_queue: WebhookQueue | None = None,
) -> None:
    """A batch ended (completed, or cancelled by its owner): `batch_completed` to its owner,
    and the `batch.completed` webhook to the batch's `webhookUrl` and to the owner's
    endpoints that subscribed to it. The one place a batch's end is announced; it runs
    once per end (`finish` is a conditional write), and a repeat would be the same
    delivery (its key is the batch and the moment it ended)."""
    completed_at = iso_ms(batch.completed_at or utcnow())
    payload = {
        "userId": batch.user_id,
        **counts_payload(batch, counts),
        "status": batch.status,
        "completedAt": completed_at,
    }
    await notifier.user_event(batch.user_id, "batch_completed", payload)
    if store is None or webhook_queue is None:
        return
    try:
        await webhooks.announce(
            "batch.completed",
            batch.user_id,
            {**payload, "webhookUrl": batch.webhook_url},
            store=store,
            queue=webhook_queue,
            job_webhook_url=batch.webhook_url,
            event_key=f"batch.completed:{batch.batch_id}:{completed_at}",
        )
    except Exception:  # the batch's end is recorded; its webhooks are extra
        log.exception("batch %s: batch.completed webhooks not announced", batch.batch_id)


class BatchRunner:
    """`ports.BatchTurns` over the store and the queue."""

    def __init__(
        self,
        *,
        store: Store,
        queue: JobQueue,
        notifier: Notifier,
        settings: Settings,
        webhook_queue: WebhookQueue | None = None,
    ) -> None:
        self.webhook_queue = webhook_queue
        self.store = store
        self.queue = queue
        self.notifier = notifier
        self.settings = settings
        self._progress_at: dict[str, float] = {}

    async def next_turns(self, batch_id: str) -> None:
        try:
            await self._next_turns(batch_id)
        except Exception as exc:  # the periodic pass does it later
            log.warning("batch %s: next turns not taken: %s", batch_id, type(exc).__name__)

    async def _next_turns(self, batch_id: str) -> None:
        owner = secrets.token_hex(8)
        locked_at = await self._lock(batch_id, owner)
        if locked_at is None:
            log.info("batch %s: its lock stayed busy; the periodic pass takes over", batch_id)
            return
        try:
            await self._fill(batch_id, owner, locked_at)
        finally:
            await self.store.batches.unlock(batch_id, owner=owner)

    async def _lock(self, batch_id: str, owner: str) -> float | None:
        """The lock for `owner`, waited for briefly; when it was asked for (monotonic), or
        None when it stayed busy."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        pause = 0.005
        while True:
            asked, now = time.monotonic(), utcnow()
            until = now + timedelta(seconds=LOCK_SECONDS)
            if await self.store.batches.lock(batch_id, owner=owner, until=until, at=now):
                return asked
            if time.monotonic() + pause > deadline:
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def _fill(self, batch_id: str, owner: str, held_since: float) -> None:
        batch = await self.store.batches.get(batch_id)
        if batch is None or batch.status != "running":
            return
        counts = await self.store.batches.counts(batch_id)
        free = self.settings.batch_concurrency - counts.in_queue
        claimed = 0
        while free > 0 and counts.waiting > claimed:
            if time.monotonic() - held_since >= LOCK_SECONDS / 2:
                # Stalled (a slow store or queue): the count above holds only while no
                # one else filled meanwhile, that is while the lock is still this one's.
                until = utcnow() + timedelta(seconds=LOCK_SECONDS)
                if not await self.store.batches.renew(batch_id, owner=owner, until=until):
                    log.warning("batch %s: its lock was taken over; this fill stops", batch_id)
                    return
                held_since = time.monotonic()
            job = await self.store.batches.claim_next(batch_id, at=utcnow())
            if job is None:
                break
            claimed += 1
            free -= 1
            delay_ms = max(0, round((job.scheduled_for - utcnow()).total_seconds() * 1000))
            try:
                await self.queue.enqueue(
                    job_id=job.job_id, data=queue_message(job), delay_ms=delay_ms
                )
            except AppError:
                # Claimed in the store: due for the reconciler, which queues it again.
                log.warning("batch %s: job %s claimed but not queued", batch_id, job.job_id)
                break
        if not claimed and counts.unfinished == 0:
            finished = await self.store.batches.finish(batch_id, status="completed", at=utcnow())
            if finished is not None:
                self._progress_at.pop(batch_id, None)
                await self.announce_completed(finished, counts)
            return
        await self._progress(batch, counts)

    async def announce_completed(self, batch: Batch, counts: BatchCounts) -> None:
        await announce_batch_completed(
            self.notifier, batch, counts, store=self.store, webhook_queue=self.webhook_queue
        )

    async def _progress(self, batch: Batch, counts: BatchCounts) -> None:
        """`batch_progress`, at most once per PROGRESS_INTERVAL_SECONDS per batch and
        process."""
        now = time.monotonic()
        if now - self._progress_at.get(batch.batch_id, -PROGRESS_INTERVAL_SECONDS) < (
            PROGRESS_INTERVAL_SECONDS
        ):
            return
        self._progress_at[batch.batch_id] = now
        if len(self._progress_at) > SWEEP_LIMIT:
            self._progress_at.clear()
        payload = {"userId": batch.user_id, **counts_payload(batch, counts)}
        await self.notifier.user_event(batch.user_id, "batch_progress", payload)

    async def sweep(self) -> int:
        """The periodic pass: `next_turns` for every running batch (slots a crash left
        free, batches whose last announcement was lost); how many it looked at."""
        batches = await self.store.batches.list_running(limit=SWEEP_LIMIT)
        for batch in batches:
            await self.next_turns(batch.batch_id)
        return len(batches)
