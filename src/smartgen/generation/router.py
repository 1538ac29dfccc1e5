"""/generate-content: queue a generation, read its status, list jobs, save the result."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status

from smartgen.content import service as content_service
from smartgen.content.schemas import ContentOut, SaveRequest, content_out
from smartgen.deps import CurrentCaller
from smartgen.errors import error_responses
from smartgen.generation import service
from smartgen.generation.schemas import GenerationRequest, JobOut, QueuedResponse, Status, job_out
from smartgen.store.base import JobStatus
from smartgen.times import iso_ms

router = APIRouter(
    prefix="/generate-content",
    tags=["generation"],
    responses=error_responses(400, 401, 413, 415, 422, 429, 503),
)


@router.post("", status_code=status.HTTP_202_ACCEPTED)
async def queue_generation(body: GenerationRequest, caller: CurrentCaller) -> QueuedResponse:
    """Queue a content generation; it runs after GENERATION_DELAY_SECONDS."""
    rt = caller.rt
    await rt.limiter.hit(
        "generate",
        caller.user_id,
        limit=rt.settings.generate_rate_limit,
        window_seconds=rt.settings.generate_rate_window_seconds,
        fail_open=False,  # without Redis the job could not be queued anyway
    )
    job = await service.enqueue_generation(
        store=rt.store,
        queue=rt.queue,
        settings=rt.settings,
        user_id=caller.user_id,
        prompt=body.prompt,
        content_type=body.contentType,
    )
    await rt.notifier.job_changed(job)
    estimated = job.scheduled_for + timedelta(seconds=rt.settings.expected_processing_seconds)
    delay = rt.settings.generation_delay_seconds
    return QueuedResponse(
        jobId=job.job_id,
        status=job.status.value,
        delaySeconds=int(delay) if float(delay).is_integer() else delay,
        scheduledFor=iso_ms(job.scheduled_for),
        estimatedCompletionTime=iso_ms(estimated),
    )


@router.get("", response_model_exclude_none=True)
async def list_jobs(
    caller: CurrentCaller,
    limit: Annotated[int | None, Query(ge=1, description="Default 50, at most 200")] = None,
    status_filter: Annotated[Status | None, Query(alias="status")] = None,
) -> list[JobOut]:
    """The caller's jobs, newest first."""
    settings = caller.rt.settings
    limit = min(limit or settings.jobs_list_default_limit, settings.jobs_list_max_limit)
    jobs = await caller.rt.store.jobs.list_for_user(
        caller.user_id,
        limit=limit,
        status=JobStatus(status_filter) if status_filter else None,
    )
    return [job_out(j) for j in jobs]


@router.get("/{jobId}", response_model_exclude_none=True, responses=error_responses(404))
async def get_job(jobId: str, caller: CurrentCaller) -> JobOut:
    """One of the caller's jobs: status, and the content once completed."""
    return job_out(
        await service.get_job(store=caller.rt.store, user_id=caller.user_id, job_id=jobId)
    )


@router.post(
    "/{jobId}/save",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": ContentOut, "description": "Already saved: the existing document"},
        **error_responses(404, 409),
    },
)
async def save_job(
    jobId: str,
    caller: CurrentCaller,
    response: Response,
    body: Annotated[SaveRequest | None, Body()] = None,
) -> ContentOut:
    """Save a completed job's content into the permanent Content collection."""
    store = caller.rt.store
    job = await service.get_job(store=store, user_id=caller.user_id, job_id=jobId)
    content, created = await content_service.save_from_job(
        store=store, job=job, title=body.title if body else None
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return content_out(content)
