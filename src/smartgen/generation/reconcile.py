"""The reconciler: the store is the source of truth, so no job may wait forever.

Redis can lose data (no persistence, FLUSHALL, a failover) and the API can fail between
its two writes. At start-up and then periodically, the worker looks for jobs that are
`queued` or `processing` in the store, past their time, and asks the queue about each:

- a live queue entry (delayed, waiting, active, …): nothing to do;
- no entry: queue it again, to run now (same job id, so two workers doing this at once
  add it once);
- an entry the queue has finished with while the store disagrees: `failed` → record the
  failure; `completed` → the completion was lost, queue it again;
- older than `RECONCILE_MAX_AGE_SECONDS`: fail it with a clear message instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta

from smartgen.config import Settings
from smartgen.errors import AppError
from smartgen.generation import budget
from smartgen.generation.service import queue_message
from smartgen.kit.times import utcnow
from smartgen.models import Job, JobStatus
from smartgen.ports import BatchTurns, Budgets, JobQueue, Notifier
from smartgen.store.base import Store

log = logging.getLogger(__name__)

# A worker holds at most WORKER_CONCURRENCY jobs (≤ 10,000).
TAKE_OVER_LIMIT = 10_000
LIVE_STATES = frozenset({"delayed", "waiting", "active", "prioritized", "waiting-children"})
EXPIRED = "Generation failed: the job could not be processed in time; please queue it again"
LOST = "Generation failed: the job could not be processed; please queue it again"


@dataclass
class ReconcileReport:
    checked: int = 0
    requeued: int = 0
    failed: int = 0


class Reconciler:
    def __init__(
        self,
        *,
        store: Store,
        queue: JobQueue,
        notifier: Notifier,
        settings: Settings,
        budgets: Budgets | None = None,
        turns: BatchTurns | None = None,
        sweep: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.turns = turns
        # Batches' periodic pass (`batches.runner.BatchRunner.sweep`), after the jobs'.
        self.sweep = sweep
        self.store = store
        self.queue = queue
        self.notifier = notifier
        self.settings = settings
        self.budgets = budgets

    async def run_once(self) -> ReconcileReport:
        report = ReconcileReport()
        now = utcnow()
        # Leave a margin so a job that is due right now is not raced with its own delivery.
        due_before = now - timedelta(seconds=self.settings.reconcile_grace_seconds)
        jobs = await self.store.jobs.list_unfinished_due(
            due_before, limit=self.settings.reconcile_batch
        )
        max_age = timedelta(seconds=self.settings.reconcile_max_age_seconds)
        for job in jobs:
            report.checked += 1
            state = await self.queue.state(job.job_id)
            if state in LIVE_STATES:
                continue
            # The job may have finished between the two reads (its queue entry is then
            # completed or removed): only the store's answer after the queue's counts.
            current = await self.store.jobs.get(job.job_id)
            if current is None or current.status.is_final:
                continue
            job = current
            if now - job.scheduled_for > max_age:
                await self._fail(job, EXPIRED)
                report.failed += 1
            elif state == "failed":
                await self._fail(job, LOST)
                report.failed += 1
            else:
                if state == "completed":
                    await self.queue.remove(job.job_id)
                await self.queue.enqueue(job_id=job.job_id, data=queue_message(job), delay_ms=0)
                report.requeued += 1
                log.warning("job %s had no queue entry (%s): queued again", job.job_id, state)
        if self.sweep is not None:
            await self.sweep()
        return report

    async def take_over(self, worker: str) -> int:
        """The jobs a dead `worker` was running (`queue.liveness` claimed it): their leases
        end and each is queued again at once, under a message id of its own (the old
        message is still locked by the dead worker in the queue; when bullmq gives it out
        again, the job is running or done and that delivery ends by itself). Never raises:
        what it could not do is left to the leases running out."""
        try:
            jobs = await self.store.jobs.release_leases_of(worker, limit=TAKE_OVER_LIMIT)
            for job in jobs:
                rescue = f"{job.job_id}-rescue-{secrets.token_hex(4)}"
                await self.queue.enqueue(
                    job_id=job.job_id, data=queue_message(job), delay_ms=0, message_id=rescue
                )
        except Exception as exc:
            log.warning(
                "could not take over the jobs of worker %s (%s): their leases run out instead",
                worker,
                type(exc).__name__,
            )
            return 0
        if jobs:
            log.warning(
                "worker %s died running %d job(s): queued again (%s)",
                worker,
                len(jobs),
                ", ".join(job.job_id for job in jobs[:10]),
            )
        return len(jobs)

    async def _fail(self, job: Job, message: str) -> None:
        at = utcnow()
        if await self.store.jobs.mark_failed(job.job_id, error=message, at=at):
            log.warning("job %s failed by the reconciler: %s", job.job_id, message)
            await budget.release(self.budgets, job.job_id)
            await self.notifier.job_changed(
                replace(job, status=JobStatus.failed, error=message, failed_at=at, updated_at=at)
            )
            if job.batch_id is not None and self.turns is not None:
                await self.turns.next_turns(job.batch_id)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """At start-up, then every RECONCILE_INTERVAL_SECONDS until `stop` is set."""
        while not stop.is_set():
            try:
                report = await self.run_once()
                if report.requeued or report.failed:
                    log.info(
                        "reconciler: checked %d, queued again %d, failed %d",
                        report.checked,
                        report.requeued,
                        report.failed,
                    )
            except (AppError, OSError, TimeoutError) as exc:
                log.warning("reconciler skipped a round: %s", exc)
            except Exception:
                log.exception("reconciler error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.reconcile_interval_seconds)
