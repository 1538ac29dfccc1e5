"""/generate-content: queue a generation, read its status, list jobs (saving a result is
`content/router.py`'s)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from smartgen.api.deps import (
    CurrentUser,
    NotifierDep,
    QueueDep,
    SettingsDep,
    StoreDep,
    rate_limit,
)
from smartgen.errors import QueueUnavailable, error_responses
from smartgen.generation import service
from smartgen.generation.schemas import (
    GenerationRequest,
    JobOut,
    QueuedResponse,
    job_out,
    queued_response,
)
from smartgen.models import JobStatus

router = APIRouter(
    prefix="/generate-content",
    tags=["generation"],
    responses=error_responses(400, 401, 413, 415, 422, 429, 503),
)

# Without Redis the job could not be queued anyway: the limiter fails closed, and says so.
generate_limit = rate_limit(
    "generate",
    lambda s: (s.generate_rate_limit, s.generate_rate_window_seconds),
    per="user",
    fail_open=False,
    unavailable=QueueUnavailable(),
)


@router.post("", status_code=status.HTTP_202_ACCEPTED, dependencies=[generate_limit])
async def queue_generation(
    body: GenerationRequest,
    user: CurrentUser,
    store: StoreDep,
    queue: QueueDep,
    notifier: NotifierDep,
    settings: SettingsDep,
) -> QueuedResponse:
    """Queue a content generation; it runs after GENERATION_DELAY_SECONDS."""
    queued = await service.queue_generation(
        store=store,
        queue=queue,
        notifier=notifier,
        settings=settings,
        user_id=user.user_id,
        prompt=body.prompt,
        content_type=body.contentType,
    )
    return queued_response(queued)


@router.get("", response_model_exclude_none=True)
async def list_jobs(
    user: CurrentUser,
    store: StoreDep,
    settings: SettingsDep,
    limit: Annotated[int | None, Query(ge=1, description="Default 50, at most 200")] = None,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
) -> list[JobOut]:
    """The caller's jobs, newest first."""
    jobs = await service.list_jobs(
        store=store,
        settings=settings,
        user_id=user.user_id,
        limit=limit,
        status=status_filter,
    )
    return [job_out(j) for j in jobs]


@router.get("/{jobId}", response_model_exclude_none=True, responses=error_responses(404))
async def get_job(jobId: str, user: CurrentUser, store: StoreDep) -> JobOut:
    """One of the caller's jobs: status, and the content once completed."""
    return job_out(await service.get_job(store=store, user_id=user.user_id, job_id=jobId))
