"""Queueing a generation and reading jobs back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from smartgen.config import Settings
from smartgen.errors import AppError, Conflict, NotFound, TooManyRequests, ValidationFailed
from smartgen.generation import budget
from smartgen.generation.prompts import model_request
from smartgen.kit.outbound import UrlRefused, check_url
from smartgen.kit.times import utcnow
from smartgen.models import Job, JobStatus, job_to_wire
from smartgen.ports import Budgets, JobQueue, Notifier, Prices, Timings
from smartgen.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueuedJob:
    job: Job
    delay_seconds: float
    estimated_completion: datetime
    estimated_cost: float | None = None


def queue_message(job: Job, *, stored: bool = False) -> dict[str, Any]:
    """The queue message of a job: ids and what to generate (the worker reads the rest
    from the store). `stored`: `job` is the job exactly as just stored; the message then
    carries it whole (`job`), and a worker that finds it unchanged takes it without
    reading it back (`JobRepository.mark_processing`'s `expected`)."""
    message: dict[str, Any] = {
        "jobId": job.job_id,
        "userId": job.user_id,
        "contentType": job.content_type,
        "prompt": job.prompt,
    }
    if stored:
        message["job"] = job_to_wire(job)
    return message


def check_prompt(settings: Settings, prompt: str) -> None:
    if len(prompt) > settings.prompt_max_chars:
        raise ValidationFailed(
            f"prompt: must be at most {settings.prompt_max_chars} characters (got {len(prompt)})",
            details=[{"field": "prompt", "message": "too long"}],
        )


async def estimate(settings: Settings, timings: Timings | None, job: Job) -> datetime:
    """`scheduledFor` plus the median of recent processing times for the job's content
    type (EXPECTED_PROCESSING_SECONDS until there is history)."""
    typical = await timings.typical_seconds(job.content_type) if timings is not None else None
    seconds = typical if typical is not None else settings.expected_processing_seconds
    return job.scheduled_for + timedelta(seconds=seconds)


async def resolve_options(
    *, store: Store, settings: Settings, user_id: str, options: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The options as the job keeps them: the model checked against ALLOWED_MODELS, and a
    copy of the caller's brand voice (404 for a voice that is not theirs)."""
    if not options:
        return None
    resolved = dict(options)
    model = resolved.get("model")
    if model is not None and model not in settings.models_allowed:
        allowed = ", ".join(settings.models_allowed)
        raise ValidationFailed(
            f"model: {model!r} is not allowed; choose one of: {allowed}",
            details=[{"field": "model", "message": f"one of: {allowed}"}],
        )
    voice_id = resolved.get("voiceId")
    if voice_id is not None:
        voice = await store.voices.get_for_user(str(voice_id), user_id)
        if voice is None:
            raise NotFound("Voice not found", code="voice_not_found")
        resolved["voice"] = {
            "voiceId": voice.voice_id,
            "name": voice.name,
            "description": voice.description,
            "examples": list(voice.examples),
        }
    return resolved


async def checked_webhook_url(*, store: Store, settings: Settings, user_id: str, url: str) -> str:
    """A job's own `webhookUrl`, when webhooks may call it (the SSRF rules: 422
    `webhook_url_refused` naming why) and the user has a default secret to sign with (409
    `webhook_secret_missing` else)."""
    try:
        checked = await check_url(
            url,
            allow_http=settings.webhook_allow_http,
            allow_private=settings.webhook_allow_private_networks,
        )
    except UrlRefused as refused:
        raise ValidationFailed(
            f"webhookUrl: {refused.reason}",
            code="webhook_url_refused",
            details=[{"field": "webhookUrl", "message": refused.reason}],
        ) from None
    if await store.webhooks.get_secret(user_id) is None:
        raise Conflict(
            "webhookUrl: get your default webhook secret first (GET /webhooks/secret); "
            "this job's deliveries are signed with it",
            code="webhook_secret_missing",
        )
    return checked.url


async def queue_generation(
    *,
    store: Store,
    queue: JobQueue,
    notifier: Notifier,
    settings: Settings,
    user_id: str,
    prompt: str,
    content_type: str,
    delay_seconds: float | None = None,
    timings: Timings | None = None,
    options: dict[str, Any] | None = None,
    prices: Prices | None = None,
    budgets: Budgets | None = None,
    parent: Job | None = None,
) -> QueuedJob:
    """Quote the job and reserve the quote in the user's monthly budget (402 when it
    does not fit), store the job, then queue it with its delay (GENERATION_DELAY_SECONDS
    unless the caller chose one), then announce it.

    The store write comes first so the worker always finds the record; if the queue
    refuses the job, the record is removed again (and its reservation given back), so no
    job is left that would never run. `options` are as `resolve_options` made them;
    `parent`: the completed job this one is a variation of.
    """
    check_prompt(settings, prompt)
    now = utcnow()
    delay = settings.generation_delay_seconds if delay_seconds is None else delay_seconds
    job = Job(
        job_id=str(uuid4()),
        user_id=user_id,
        status=JobStatus.queued,
        prompt=prompt,
        content_type=content_type,
        scheduled_for=now + timedelta(seconds=delay),
        created_at=now,
        updated_at=now,
        options=options or None,
        parent_job_id=parent.job_id if parent is not None else None,
    )
    previous = parent.generated_content if parent is not None else None
    quoted = await budget.quote(
        settings, prices, model_request(content_type, prompt, options, previous=previous)
    )
    reserved = await budget.reserve(
        settings=settings,
        budgets=budgets,
        notifier=notifier,
        user_id=user_id,
        job_id=job.job_id,
        quoted=quoted,
        at=now,
    )
    try:
        await _store_and_queue(store, queue, settings, job, delay)
    except AppError:
        if reserved:
            await budget.release(budgets, job.job_id)
        raise
    await notifier.job_changed(job)
    return QueuedJob(
        job=job,
        delay_seconds=delay,
        estimated_completion=await estimate(settings, timings, job),
        estimated_cost=quoted.cost,
    )


def too_many_unfinished(unfinished: int, cap: int, delay: float) -> TooManyRequests:
    """The refusal of a job past MAX_UNFINISHED_JOBS (429 too_many_unfinished_jobs)."""
    return TooManyRequests(
        f"You have {unfinished} unfinished jobs (at most {cap}); wait for some to finish",
        code="too_many_unfinished_jobs",
        headers={"Retry-After": str(max(1, round(delay)))},
    )


async def _store_and_queue(
    store: Store, queue: JobQueue, settings: Settings, job: Job, delay: float
) -> None:
    user_id = job.user_id
    # The cap (0 = off) is checked by the insert itself: one statement on the SQL store.
    cap = settings.max_unfinished_jobs
    if not await store.jobs.create(job, max_unfinished=cap):
        # Only the refusal pays for the count, for the message; jobs may have finished
        # since the insert was refused, but there were at least `cap` then.
        unfinished = max(await store.jobs.count_unfinished(user_id), cap)
        raise too_many_unfinished(unfinished, cap, delay)
    try:
        delay_ms = round(delay * 1000)
        message = queue_message(job, stored=True)
        await queue.enqueue(job_id=job.job_id, data=message, delay_ms=delay_ms)
    except AppError:
        try:
            await store.jobs.delete(job.job_id)
        except AppError:
            # The reconciler fails or re-queues it later; never leave it silently.
            log.error("job %s could not be queued nor removed", job.job_id)
        raise


async def queue_variation(
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
) -> QueuedJob:
    """Another take of the owner's completed job: a new job with the same prompt, content
    type and options (its brand voice as the original applied it), linked by
    `parentJobId`, told to differ from the original's text."""
    parent = await get_job(store=store, user_id=user_id, job_id=job_id)
    if parent.status != JobStatus.completed:
        raise Conflict(
            f"Only completed jobs can have variations; this job is {parent.status.value}",
            code="job_not_completed",
        )
    options = dict(parent.options) if parent.options else None
    if options and options.get("model") not in (None, *settings.models_allowed):
        options.pop("model")  # no longer allowed: the deployment's model instead
    return await queue_generation(
        store=store,
        queue=queue,
        notifier=notifier,
        settings=settings,
        user_id=user_id,
        prompt=parent.prompt,
        content_type=parent.content_type,
        timings=timings,
        options=options,
        prices=prices,
        budgets=budgets,
        parent=parent,
    )


def parse_job_id(job_id: str) -> str:
    """Job ids are UUIDs; anything else cannot exist (404, never a 500)."""
    try:
        return str(UUID(job_id))
    except (ValueError, AttributeError):
        raise NotFound("Job not found", code="job_not_found") from None


async def get_job(*, store: Store, user_id: str, job_id: str) -> Job:
    """The owner's job; another user's job is indistinguishable from a missing one."""
    job = await store.jobs.get_for_user(parse_job_id(job_id), user_id)
    if job is None:
        raise NotFound("Job not found", code="job_not_found")
    return job


async def list_jobs(
    *,
    store: Store,
    settings: Settings,
    user_id: str,
    limit: int | None,
    status: JobStatus | None,
) -> list[Job]:
    """The user's jobs, newest first; `limit` defaults to and is capped by the settings."""
    limit = min(limit or settings.jobs_list_default_limit, settings.jobs_list_max_limit)
    return await store.jobs.list_for_user(user_id, limit=limit, status=status)
