"""Controlling a job: cancel it, change it while it waits, run it now, retry it.

Every change is decided in the store by a conditional update (the job's state at that
moment), then the queue follows; a change the queue refuses is undone in the store, so the
two never disagree for long (the reconciler covers the rest).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from smartgen.config import Settings
from smartgen.errors import AppError, Conflict, ValidationFailed
from smartgen.generation import budget
from smartgen.generation.prompts import model_request
from smartgen.generation.service import (
    QueuedJob,
    check_prompt,
    estimate,
    get_job,
    parse_job_id,
    queue_message,
    too_many_unfinished,
)
from smartgen.kit.times import iso_ms, utcnow
from smartgen.models import RETRYABLE, Job, JobStatus
from smartgen.ports import BatchTurns, Budgets, JobQueue, LiveText, Notifier, Prices, Timings
from smartgen.store.base import Store

log = logging.getLogger(__name__)

# A requested time this far in the past counts as "now" (clocks differ a little).
PAST_TOLERANCE = timedelta(seconds=60)
# How long a retry waits for a stopping job's old queue entry to go.
RETRY_WAIT_SECONDS = 3.0
RETRY_WAIT_STEPS = 30


async def _final_conflict(
    store: Store, user_id: str, job_id: str, code: str, wanted: str
) -> Conflict:
    """Why a conditional change did not apply: 404 for a job that is not the caller's,
    else 409 naming the job's state."""
    job = await get_job(store=store, user_id=user_id, job_id=job_id)
    state = job.status.value
    if code == "job_final":
        return Conflict(f"This job is already {state}; there is nothing to cancel", code=code)
    return Conflict(f"Only {wanted} jobs can be changed this way; this job is {state}", code=code)


async def cancel_job(
    *,
    store: Store,
    queue: JobQueue,
    notifier: Notifier,
    user_id: str,
    job_id: str,
    budgets: Budgets | None = None,
    turns: BatchTurns | None = None,
) -> Job:
    """`queued` or `processing` → `cancelled`, decided in the store (a completion racing
    the cancel finds the job cancelled, or the cancel finds it completed: 409). Then the
    queue entry goes, and the worker running the job, if any, stops its model call; its
    budget reservation is given back, and a batch's job hands its turn on."""
    job_id = parse_job_id(job_id)
    cancelled = await store.jobs.cancel(job_id, user_id, at=utcnow())
    if cancelled is None:
        raise await _final_conflict(store, user_id, job_id, "job_final", "unfinished")
    await budget.release(budgets, job_id)
    try:
        await queue.cancel(job_id)
    except AppError:
        # Cancelled in the store all the same: a delivery finds it final and drops it.
        log.warning("job %s cancelled, but its queue entry could not be removed", job_id)
    await notifier.job_changed(cancelled)
    if cancelled.batch_id is not None and turns is not None:
        await turns.next_turns(cancelled.batch_id)
    return cancelled


def _new_schedule(
    settings: Settings,
    now: datetime,
    *,
    delay_seconds: float | None,
    scheduled_for: datetime | None,
) -> datetime | None:
    if delay_seconds is not None and scheduled_for is not None:
        raise ValidationFailed(
            "Give delaySeconds or scheduledFor, not both",
            details=[{"field": "scheduledFor", "message": "not with delaySeconds"}],
        )
    if delay_seconds is not None:
        return now + timedelta(seconds=delay_seconds)
    if scheduled_for is None:
        return None
    latest = now + timedelta(seconds=settings.max_delay_seconds)
    if scheduled_for > latest:
        raise ValidationFailed(
            f"scheduledFor: must be at most {settings.max_delay_seconds:g} s from now "
            f"(before {iso_ms(latest)})",
            details=[{"field": "scheduledFor", "message": "too far in the future"}],
        )
    if scheduled_for < now - PAST_TOLERANCE:
        raise ValidationFailed(
            "scheduledFor: must not be in the past",
            details=[{"field": "scheduledFor", "message": "in the past"}],
        )
    return max(scheduled_for, now)


async def _requeue_or_restore(
    store: Store, queue: JobQueue, before: Job, after: Job, now: datetime
) -> None:
    """Move the queue entry to the job's new time; if the queue cannot, put the stored
    job back as it was (nothing is left half-changed) and let the caller see the 503."""
    delay_ms = max(0, round((after.scheduled_for - now).total_seconds() * 1000))
    try:
        await queue.reschedule(job_id=after.job_id, data=queue_message(after), delay_ms=delay_ms)
    except AppError:
        if not await store.jobs.restore(before):
            log.error("job %s: queue refused the change and the job moved on", after.job_id)
        raise


async def update_job(
    *,
    store: Store,
    queue: JobQueue,
    notifier: Notifier,
    settings: Settings,
    user_id: str,
    job_id: str,
    delay_seconds: float | None = None,
    scheduled_for: datetime | None = None,
    prompt: str | None = None,
    content_type: str | None = None,
    prices: Prices | None = None,
    budgets: Budgets | None = None,
) -> Job:
    """Change a `queued` job: its time, prompt or content type (409 once it has started).
    A new prompt or type is quoted again and replaces the job's budget reservation (402
    when a larger quote no longer fits; the job is then left as it was)."""
    job_id = parse_job_id(job_id)
    if prompt is not None:
        check_prompt(settings, prompt)
    now = utcnow()
    when = _new_schedule(settings, now, delay_seconds=delay_seconds, scheduled_for=scheduled_for)
    before = await get_job(store=store, user_id=user_id, job_id=job_id)
    if (prompt is not None or content_type is not None) and before.status is JobStatus.queued:
        # Before the change: a refusal leaves nothing to undo. Should the job start
        # meanwhile, its settlement replaces this reservation with what it really used.
        request = model_request(
            content_type or before.content_type,
            before.prompt if prompt is None else prompt,
            before.options,
        )
        await budget.requote(
            settings=settings,
            budgets=budgets,
            notifier=notifier,
            user_id=user_id,
            job_id=job_id,
            quoted=await budget.quote(settings, prices, request),
            at=now,
        )
    changed = await store.jobs.reschedule(
        job_id,
        user_id,
        scheduled_for=when or before.scheduled_for,
        at=now,
        prompt=prompt,
        content_type=content_type,
    )
    if changed is None:
        raise await _final_conflict(store, user_id, job_id, "job_not_queued", "queued")
    # A batch's job waiting its turn is not in the queue: its new time counts when its
    # turn comes (`batches.runner`).
    if when is not None and not changed.batch_held:
        await _requeue_or_restore(store, queue, before, changed, now)
    await notifier.job_changed(changed)
    return changed


async def run_job_now(
    *, store: Store, queue: JobQueue, notifier: Notifier, user_id: str, job_id: str
) -> Job:
    """A `queued` job starts at once: its time becomes now (409 once it has started). A
    batch's job waiting its turn goes into the queue at once, out of turn."""
    job_id = parse_job_id(job_id)
    now = utcnow()
    before = await get_job(store=store, user_id=user_id, job_id=job_id)
    changed = await store.jobs.reschedule(job_id, user_id, scheduled_for=now, at=now, release=True)
    if changed is None:
        raise await _final_conflict(store, user_id, job_id, "job_not_queued", "queued")
    await _requeue_or_restore(store, queue, before, changed, now)
    await notifier.job_changed(changed)
    return changed


async def retry_job(
    *,
    store: Store,
    queue: JobQueue,
    notifier: Notifier,
    settings: Settings,
    user_id: str,
    job_id: str,
    timings: Timings | None = None,
    prices: Prices | None = None,
    budgets: Budgets | None = None,
    turns: BatchTurns | None = None,
) -> QueuedJob:
    """A `failed` or `cancelled` job is queued again: the same job id, a new time after
    GENERATION_DELAY_SECONDS, its earlier run kept in `history`; its quote is reserved in
    the monthly budget again (402 when it no longer fits). A batch's job waits its turn
    again (its batch, finished or not, runs it within BATCH_CONCURRENCY)."""
    job_id = parse_job_id(job_id)
    before = await get_job(store=store, user_id=user_id, job_id=job_id)
    if before.status not in RETRYABLE:
        raise Conflict(
            f"Only failed or cancelled jobs can be retried; this job is {before.status.value}",
            code="job_not_retryable",
        )
    # A retried job is unfinished again: it counts against MAX_UNFINISHED_JOBS as a new
    # one does (a batch's job waits its turn instead, as its rows do).
    cap = settings.max_unfinished_jobs
    if cap > 0 and (before.batch_id is None or turns is None):
        unfinished = await store.jobs.count_unfinished(user_id)
        if unfinished >= cap:
            raise too_many_unfinished(unfinished, cap, settings.generation_delay_seconds)
    # Its old queue entry must go first (a queue keeps one entry per job id); one a
    # worker still holds (a cancelled job still stopping) goes in a moment.
    for _ in range(RETRY_WAIT_STEPS):
        if await queue.remove(job_id):
            break
        await asyncio.sleep(RETRY_WAIT_SECONDS / RETRY_WAIT_STEPS)
    else:
        raise Conflict(
            "This job is still stopping; retry it in a moment", code="job_busy",
            headers={"Retry-After": "1"},
        )  # fmt: skip
    now = utcnow()
    delay = settings.generation_delay_seconds
    history = [*(before.history or []), run_record(before)]
    request = model_request(before.content_type, before.prompt, before.options)
    quoted = await budget.quote(settings, prices, request)
    reserved = await budget.reserve(
        settings=settings, budgets=budgets, notifier=notifier, user_id=user_id,
        job_id=job_id, quoted=quoted, at=now,
    )  # fmt: skip
    try:
        in_batch = before.batch_id is not None and turns is not None
        if in_batch and before.batch_id is not None:
            # Running again before the job waits again: the periodic pass fills running
            # batches only.
            await store.batches.reopen(before.batch_id, at=now)
        queued = await store.jobs.requeue(
            job_id,
            user_id,
            scheduled_for=now + timedelta(seconds=delay),
            at=now,
            history=history,
            held=in_batch,
        )
        if queued is None:
            raise await _final_conflict(
                store, user_id, job_id, "job_not_retryable", "failed or cancelled"
            )
        if in_batch and turns is not None and queued.batch_id is not None:
            await turns.next_turns(queued.batch_id)
            await notifier.job_changed(queued)
            return QueuedJob(
                job=queued,
                delay_seconds=delay,
                estimated_completion=await estimate(settings, timings, queued),
                estimated_cost=quoted.cost,
            )
        try:
            delay_ms = round(delay * 1000)
            await queue.enqueue(job_id=job_id, data=queue_message(queued), delay_ms=delay_ms)
        except AppError:
            if not await store.jobs.restore(before):
                log.error("job %s: could not be queued again nor put back", job_id)
            raise
    except AppError:
        if reserved:
            await budget.release(budgets, job_id)
        raise
    await notifier.job_changed(queued)
    return QueuedJob(
        job=queued,
        delay_seconds=delay,
        estimated_completion=await estimate(settings, timings, queued),
        estimated_cost=quoted.cost,
    )


def run_record(job: Job) -> dict[str, Any]:
    """What an ended run leaves in the job's `history`."""
    record: dict[str, Any] = {
        "status": job.status.value,
        "attempts": job.attempts,
        "scheduledFor": iso_ms(job.scheduled_for),
    }
    if job.started_at is not None:
        record["startedAt"] = iso_ms(job.started_at)
    if job.status == JobStatus.failed:
        record["error"] = job.error
        if job.failed_at is not None:
            record["failedAt"] = iso_ms(job.failed_at)
    if job.cancelled_at is not None:
        record["cancelledAt"] = iso_ms(job.cancelled_at)
    return record


async def live_text(*, live: LiveText, job: Job) -> str | None:
    """What a `processing` job has written so far (None for any other job, or when the
    live text cannot be read)."""
    if job.status != JobStatus.processing:
        return None
    try:
        return await live.get(job.job_id)
    except Exception as exc:  # live text is a courtesy: the job's state is the answer
        log.debug("job %s: live text unavailable: %s", job.job_id, exc)
        return None
