"""Creating, reading, cancelling and retrying batches; their results, row by row.

A batch's rows are validated as POST /generate-content's bodies are (the same model, the
same checks), each on its own: a row that is not valid is reported in `rejected` and the
others become ordinary jobs, `queued` and waiting their turn (`batches.runner` lets
BATCH_CONCURRENCY of them into the queue at once).

Limits: a batch counts as BATCH_CONCURRENCY unfinished jobs against MAX_UNFINISHED_JOBS
when it is created (its waiting rows are not counted, its jobs in the queue are), so a
batch larger than the cap runs, BATCH_CONCURRENCY at a time; each accepted row's quote is
reserved in the monthly budget at creation (a row that no longer fits is rejected with the
budget's message).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

from pydantic import ValidationError

from smartgen.batches.files import unreadable
from smartgen.batches.runner import LOCK_SECONDS, BatchRunner
from smartgen.config import Settings
from smartgen.errors import AppError, NotFound, PaymentRequired, TooManyRequests, ValidationFailed
from smartgen.generation import budget, control
from smartgen.generation.prompts import model_request
from smartgen.generation.schemas import GenerationRequest
from smartgen.generation.service import check_prompt, checked_webhook_url, resolve_options
from smartgen.kit.times import utcnow
from smartgen.models import Batch, BatchCounts, Job, JobStatus
from smartgen.ports import Budgets, JobQueue, Notifier, Prices
from smartgen.store.base import Store

log = logging.getLogger(__name__)

PAGE = 200  # rows read per store call (results, cancel, retry)


def parse_batch_id(batch_id: str) -> str:
    try:
        return str(UUID(batch_id))
    except (ValueError, AttributeError):
        raise NotFound("Batch not found", code="batch_not_found") from None


async def get_batch(*, store: Store, user_id: str, batch_id: str) -> Batch:
    """The owner's batch; another user's is indistinguishable from a missing one."""
    batch = await store.batches.get_for_user(parse_batch_id(batch_id), user_id)
    if batch is None:
        raise NotFound("Batch not found", code="batch_not_found")
    return batch


def _errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "row"
        message = "unknown field" if error.get("type") == "extra_forbidden" else error["msg"]
        parts.append(f"{where[:60]}: {message}")
    return "; ".join(parts)


async def _row_request(
    *,
    store: Store,
    settings: Settings,
    user_id: str,
    row: Any,
) -> tuple[GenerationRequest, dict[str, Any] | None]:
    """The row as a generation request and its resolved options; `ValidationFailed` or
    `NotFound` saying why it cannot be one."""
    why = unreadable(row)
    if why is not None:
        raise ValidationFailed(why)
    if not isinstance(row, dict):
        raise ValidationFailed("a row must be a JSON object")
    try:
        request = GenerationRequest.model_validate(row)
    except ValidationError as exc:
        raise ValidationFailed(_errors(exc)) from None
    check_prompt(settings, request.prompt)
    if getattr(request, "webhookUrl", None) is not None:
        # A batch is told once, at its end (the batch's own webhookUrl).
        raise ValidationFailed("webhookUrl: not per row; give the batch's webhookUrl")
    if request.delaySeconds is not None and request.delaySeconds > settings.max_delay_seconds:
        raise ValidationFailed(f"delaySeconds: must be at most {settings.max_delay_seconds:g}")
    try:
        resolved = await resolve_options(
            store=store, settings=settings, user_id=user_id, options=request.options()
        )
    except NotFound:
        raise NotFound("voiceId: no such voice of yours") from None
    return request, resolved


async def create_batch(
    *,
    store: Store,
    runner: BatchRunner,
    notifier: Notifier,
    settings: Settings,
    user_id: str,
    rows: list[Any],
    delay_seconds: float | None,
    webhook_url: str | None,
    prices: Prices | None = None,
    budgets: Budgets | None = None,
) -> Batch:
    """Validate every row, store the batch and its jobs (waiting their turn), then let the
    first BATCH_CONCURRENCY into the queue."""
    if not rows:
        raise ValidationFailed(
            "rows: give at least one row", details=[{"field": "rows", "message": "empty"}]
        )
    if len(rows) > settings.batch_max_rows:
        raise ValidationFailed(
            f"A batch has at most {settings.batch_max_rows} rows (BATCH_MAX_ROWS); got {len(rows)}",
            code="batch_too_large",
            details=[{"field": "rows", "message": f"at most {settings.batch_max_rows}"}],
        )
    if delay_seconds is not None and delay_seconds > settings.max_delay_seconds:
        raise ValidationFailed(
            f"delaySeconds: must be at most {settings.max_delay_seconds:g}",
            details=[{"field": "delaySeconds", "message": "too long"}],
        )
    if webhook_url is not None:
        # Checked now as a job's own webhookUrl is (the SSRF rules; a default secret to
        # sign with), and again at each delivery.
        webhook_url = await checked_webhook_url(
            store=store, settings=settings, user_id=user_id, url=webhook_url
        )
    cap = settings.max_unfinished_jobs
    if cap > 0:
        unfinished = await store.jobs.count_unfinished(user_id)
        if unfinished + settings.batch_concurrency > cap:
            raise TooManyRequests(
                f"You have {unfinished} unfinished jobs (at most {cap}), and a batch runs "
                f"{settings.batch_concurrency} at a time; wait for some to finish",
                code="too_many_unfinished_jobs",
                headers={"Retry-After": "5"},
            )
    now = utcnow()
    batch_id = str(uuid4())
    default_delay = settings.generation_delay_seconds if delay_seconds is None else delay_seconds
    jobs: list[Job] = []
    rejected: list[dict[str, Any]] = []
    reserved: list[str] = []
    try:
        for number, row in enumerate(rows, start=1):
            try:
                request, options = await _row_request(
                    store=store, settings=settings, user_id=user_id, row=row
                )
                job = Job(
                    job_id=str(uuid4()),
                    user_id=user_id,
                    status=JobStatus.queued,
                    prompt=request.prompt,
                    content_type=request.contentType,
                    scheduled_for=now + timedelta(seconds=request.delaySeconds or default_delay),
                    created_at=now,
                    updated_at=now,
                    options=options or None,
                    batch_id=batch_id,
                    batch_row=number,
                    batch_held=True,
                )
                quoted = await budget.quote(
                    settings, prices, model_request(job.content_type, job.prompt, options)
                )
                if await budget.reserve(
                    settings=settings, budgets=budgets, notifier=notifier, user_id=user_id,
                    job_id=job.job_id, quoted=quoted, at=now,
                ):  # fmt: skip
                    reserved.append(job.job_id)
            except (ValidationFailed, NotFound, PaymentRequired) as exc:
                rejected.append({"row": number, "error": exc.message})
                continue
            jobs.append(job)
        batch = Batch(
            batch_id=batch_id,
            user_id=user_id,
            status="running",
            total=len(rows),
            accepted=len(jobs),
            rejected=rejected,
            created_at=now,
            updated_at=now,
            webhook_url=webhook_url,
        )
        await store.batches.create(batch, jobs)
    except AppError:
        for job_id in reserved:
            await budget.release(budgets, job_id)
        raise
    await runner.next_turns(batch_id)  # the first turns (or the end of an empty batch)
    return (await store.batches.get(batch_id)) or batch


async def batch_state(*, store: Store, user_id: str, batch_id: str) -> tuple[Batch, BatchCounts]:
    batch = await get_batch(store=store, user_id=user_id, batch_id=batch_id)
    return batch, await store.batches.counts(batch.batch_id)


async def list_batches(
    *, store: Store, user_id: str, before: str | None, limit: int
) -> list[tuple[Batch, BatchCounts]]:
    if before is not None:
        try:
            before = str(UUID(before))
        except ValueError:
            return []  # no batch of the caller's: nothing before it
    batches = await store.batches.list_for_user(user_id, before=before, limit=limit)
    return [(b, await store.batches.counts(b.batch_id)) for b in batches]


async def batch_jobs(
    *, store: Store, user_id: str, batch_id: str, after_row: int, limit: int
) -> list[Job]:
    batch = await get_batch(store=store, user_id=user_id, batch_id=batch_id)
    return await store.batches.jobs_page(batch.batch_id, after_row=after_row, limit=limit)


async def cancel_batch(
    *,
    store: Store,
    queue: JobQueue,
    notifier: Notifier,
    user_id: str,
    batch_id: str,
    runner: BatchRunner,
    budgets: Budgets | None = None,
) -> tuple[Batch, BatchCounts, int]:
    """Cancel what has not finished: the batch ends (`cancelled`), its waiting jobs are
    cancelled in the store at once, those in the queue one by one (their workers stop).
    A batch that already ended is answered as it is."""
    batch = await get_batch(store=store, user_id=user_id, batch_id=batch_id)
    owner = f"cancel-{uuid4().hex[:8]}"
    now = utcnow()
    # Under the batch's lock, so that no filler lets another job in meanwhile; a lock that
    # stays busy is taken over when it runs out.
    locked = await store.batches.lock(
        batch.batch_id, owner=owner, until=now + timedelta(seconds=LOCK_SECONDS), at=now
    )
    try:
        finished = await store.batches.finish(batch.batch_id, status="cancelled", at=now)
        waiting = await store.batches.cancel_waiting(batch.batch_id, at=now)
    finally:
        if locked:
            await store.batches.unlock(batch.batch_id, owner=owner)
    for job_id in waiting:
        await budget.release(budgets, job_id)
    cancelled = len(waiting)
    after = 0
    for status in (JobStatus.queued, JobStatus.processing):
        after = 0
        while page := await store.batches.jobs_page(
            batch.batch_id, after_row=after, limit=PAGE, status=status
        ):
            for job in page:
                try:
                    await control.cancel_job(
                        store=store, queue=queue, notifier=notifier, user_id=user_id,
                        job_id=job.job_id, budgets=budgets,
                    )  # fmt: skip
                    cancelled += 1
                except AppError as exc:  # it finished meanwhile
                    log.debug("batch %s: job %s not cancelled: %s", batch_id, job.job_id, exc)
            after = page[-1].batch_row or after
    counts = await store.batches.counts(batch.batch_id)
    if finished is not None:
        await runner.announce_completed(finished, counts)
        batch = finished
    return batch, counts, cancelled


async def retry_failed(
    *,
    store: Store,
    queue: JobQueue,
    runner: BatchRunner,
    notifier: Notifier,
    settings: Settings,
    user_id: str,
    batch_id: str,
    prices: Prices | None = None,
    budgets: Budgets | None = None,
) -> tuple[Batch, BatchCounts, int]:
    """Queue the batch's failed jobs again (each waits its turn, its earlier run kept in
    its `history`); the batch runs again until they end."""
    batch = await get_batch(store=store, user_id=user_id, batch_id=batch_id)
    now = utcnow()
    delay = settings.generation_delay_seconds
    requeued = 0
    refused: PaymentRequired | None = None
    first = await store.batches.jobs_page(
        batch.batch_id, after_row=0, limit=1, status=JobStatus.failed
    )
    if first:
        # Running again before any job waits again: the periodic pass looks at running
        # batches only, so a job never waits in an ended one.
        await store.batches.reopen(batch.batch_id, at=now)
    try:
        after = 0
        while not refused and (
            page := await store.batches.jobs_page(
                batch.batch_id, after_row=after, limit=PAGE, status=JobStatus.failed
            )
        ):
            for job in page:
                try:
                    if await _retry_one(
                        store, queue, notifier, settings, job, now, delay, prices, budgets
                    ):
                        requeued += 1
                except PaymentRequired as exc:
                    refused = exc
                    break
            after = page[-1].batch_row or after
    finally:
        if first:
            await runner.next_turns(batch.batch_id)  # its turns, or its end again
    if refused is not None and not requeued:
        raise refused
    batch = (await store.batches.get(batch.batch_id)) or batch
    return batch, await store.batches.counts(batch.batch_id), requeued


async def _retry_one(
    store: Store,
    queue: JobQueue,
    notifier: Notifier,
    settings: Settings,
    job: Job,
    now: Any,
    delay: float,
    prices: Prices | None,
    budgets: Budgets | None,
) -> bool:
    """One failed job of a batch queued again, waiting its turn; False when it cannot be
    (its old queue entry still held, or it is no longer failed)."""
    if not await queue.remove(job.job_id):
        return False
    quoted = await budget.quote(
        settings, prices, model_request(job.content_type, job.prompt, job.options)
    )
    reserved = await budget.reserve(
        settings=settings, budgets=budgets, notifier=notifier, user_id=job.user_id,
        job_id=job.job_id, quoted=quoted, at=now,
    )  # fmt: skip
    again = await store.jobs.requeue(
        job.job_id,
        job.user_id,
        scheduled_for=now + timedelta(seconds=delay),
        at=now,
        history=[*(job.history or []), control.run_record(job)],
        held=True,
    )
    if again is None and reserved:
        await budget.release(budgets, job.job_id)
    return again is not None
