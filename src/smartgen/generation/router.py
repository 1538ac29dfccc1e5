"""/generate-content: queue a generation, follow it, control it (saving a result is
`content/router.py`'s)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from smartgen.api.deps import (
    BudgetsDep,
    Counted,
    GenerateUser,
    LiveTextDep,
    NotifierDep,
    PricesDep,
    QueueDep,
    Queueing,
    QueueingCall,
    QueueingCaller,
    ReadUser,
    SettingsDep,
    StoreDep,
    TurnsDep,
)
from smartgen.api.idempotency import KeyHeader
from smartgen.errors import QueueUnavailable, ValidationFailed, error_responses
from smartgen.generation import control, service
from smartgen.generation.schemas import (
    GenerationRequest,
    JobOut,
    JobUpdate,
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
# Variations listed with a job, at most.
MAX_VARIATION_IDS = 100

PER_USER = Counted(
    "generate", lambda s: (s.generate_rate_limit, s.generate_rate_window_seconds), "user"
)
# Per client address, all its users together: accounts are cheap, addresses less so.
PER_ADDRESS = Counted(
    "generate-ip", lambda s: (s.generate_ip_rate_limit, s.generate_rate_window_seconds), "address"
)
# Without Redis the job could not be queued anyway: the limiter fails closed, and says so.
# Both limits in one round trip, the user's counted first.
QueueingFor = Annotated[
    QueueingCall, Depends(QueueingCaller(PER_USER, PER_ADDRESS, unavailable=QueueUnavailable()))
]
VariationFor = Annotated[
    QueueingCall, Depends(QueueingCaller(PER_USER, unavailable=QueueUnavailable()))
]
REPLAYED = {"description": "Replayed: the first answer to this Idempotency-Key"}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=QueuedResponse,
    responses={200: REPLAYED, **error_responses(402, 404, 409)},
)
async def queue_generation(
    body: GenerationRequest,
    request: Request,
    caller: QueueingFor,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Queue a content generation, steered by the optional options; it runs after
    GENERATION_DELAY_SECONDS (or `delaySeconds`)."""
    user, clients = caller.user, caller.clients
    settings, store = clients.settings, clients.store
    if body.delaySeconds is not None and body.delaySeconds > settings.max_delay_seconds:
        raise ValidationFailed(
            f"delaySeconds: must be at most {settings.max_delay_seconds:g}",
            details=[{"field": "delaySeconds", "message": "too long"}],
        )

    async def queue_it() -> service.QueuedJob:
        given = body.options()
        if body.webhookUrl is not None:
            given["webhookUrl"] = await service.checked_webhook_url(
                store=store, settings=settings, user_id=user.user_id, url=body.webhookUrl
            )
        options = await service.resolve_options(
            store=store, settings=settings, user_id=user.user_id, options=given
        )
        return await service.queue_generation(
            store=clients.store,
            queue=clients.queue,
            notifier=clients.notifier,
            settings=clients.settings,
            user_id=user.user_id,
            prompt=body.prompt,
            content_type=body.contentType,
            delay_seconds=body.delaySeconds,
            timings=clients.timings,
            options=options,
            prices=clients.prices,
            budgets=clients.budgets,
        )

    return await _answer_queued(clients, user.user_id, request, idempotency_key, body, queue_it)


@router.get("", response_model_exclude_none=True)
async def list_jobs(
    user: ReadUser,
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
async def get_job(jobId: str, user: ReadUser, store: StoreDep, live: LiveTextDep) -> JobOut:
    """One of the caller's jobs: status, the text so far while processing, the content
    once completed."""
    job = await service.get_job(store=store, user_id=user.user_id, job_id=jobId)
    # Only a completed job can have variations, and it stays completed: the others (what
    # a polling client reads until the end) need no second query.
    variations = (
        await store.jobs.variation_ids(job.job_id, user.user_id, limit=MAX_VARIATION_IDS)
        if job.status == JobStatus.completed
        else []
    )
    return job_out(
        job, partial=await control.live_text(live=live, job=job), variation_ids=variations
    )


@router.delete("/{jobId}", response_model_exclude_none=True, responses=error_responses(404, 409))
async def cancel_job(
    jobId: str,
    user: GenerateUser,
    store: StoreDep,
    queue: QueueDep,
    notifier: NotifierDep,
    budgets: BudgetsDep,
    turns: TurnsDep,
) -> JobOut:
    """Cancel a queued or running job (a running one's model call stops within about a
    second); 409 `job_final` when it already ended."""
    job = await control.cancel_job(
        store=store,
        queue=queue,
        notifier=notifier,
        user_id=user.user_id,
        job_id=jobId,
        budgets=budgets,
        turns=turns,
    )
    return job_out(job)


@router.patch(
    "/{jobId}", response_model_exclude_none=True, responses=error_responses(402, 404, 409)
)
async def update_job(
    jobId: str,
    body: JobUpdate,
    user: GenerateUser,
    store: StoreDep,
    queue: QueueDep,
    notifier: NotifierDep,
    settings: SettingsDep,
    budgets: BudgetsDep,
    prices: PricesDep,
) -> JobOut:
    """Change a queued job's time (`delaySeconds` or `scheduledFor`), prompt or content
    type; 409 `job_not_queued` once it has started; 402 `budget_exceeded` when a new
    prompt or type is quoted higher than the monthly budget still holds."""
    if body.delaySeconds is not None and body.delaySeconds > settings.max_delay_seconds:
        raise ValidationFailed(
            f"delaySeconds: must be at most {settings.max_delay_seconds:g}",
            details=[{"field": "delaySeconds", "message": "too long"}],
        )
    job = await control.update_job(
        store=store,
        queue=queue,
        notifier=notifier,
        settings=settings,
        user_id=user.user_id,
        job_id=jobId,
        delay_seconds=body.delaySeconds,
        scheduled_for=body.scheduledFor,
        prompt=body.prompt,
        content_type=body.contentType,
        prices=prices,
        budgets=budgets,
    )
    return job_out(job)


@router.post(
    "/{jobId}/run-now", response_model_exclude_none=True, responses=error_responses(404, 409)
)
async def run_now(
    jobId: str, user: GenerateUser, store: StoreDep, queue: QueueDep, notifier: NotifierDep
) -> JobOut:
    """Start a queued job at once; 409 `job_not_queued` otherwise."""
    job = await control.run_job_now(
        store=store, queue=queue, notifier=notifier, user_id=user.user_id, job_id=jobId
    )
    return job_out(job)


@router.post(
    "/{jobId}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=QueuedResponse,
    responses={200: REPLAYED, **error_responses(402, 404, 409, 429)},
)
async def retry_job(
    jobId: str,
    request: Request,
    caller: QueueingFor,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Queue a failed or cancelled job again (same jobId, new scheduledFor, its earlier
    run kept in `history`); 409 `job_not_retryable` otherwise."""
    user, clients = caller.user, caller.clients

    async def queue_it() -> service.QueuedJob:
        return await control.retry_job(
            store=clients.store,
            queue=clients.queue,
            notifier=clients.notifier,
            settings=clients.settings,
            user_id=user.user_id,
            job_id=jobId,
            timings=clients.timings,
            prices=clients.prices,
            budgets=clients.budgets,
            turns=clients.turns,
        )

    return await _answer_queued(clients, user.user_id, request, idempotency_key, None, queue_it)


@router.post(
    "/{jobId}/variations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=QueuedResponse,
    responses={200: REPLAYED, **error_responses(402, 404, 409)},
)
async def queue_variation(
    jobId: str,
    request: Request,
    caller: VariationFor,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Queue another take of a completed job: the same request and options, told to
    differ from the original (`parentJobId`); 409 `job_not_completed` otherwise."""
    user, clients = caller.user, caller.clients

    async def queue_it() -> service.QueuedJob:
        return await service.queue_variation(
            store=clients.store,
            queue=clients.queue,
            notifier=clients.notifier,
            settings=clients.settings,
            user_id=user.user_id,
            job_id=jobId,
            timings=clients.timings,
            prices=clients.prices,
            budgets=clients.budgets,
        )

    return await _answer_queued(clients, user.user_id, request, idempotency_key, None, queue_it)


async def _answer_queued(
    clients: Queueing,
    user_id: str,
    request: Request,
    key: str | None,
    body: Any,
    queue_it: Callable[[], Awaitable[service.QueuedJob]],
) -> Any:
    """A 202 with the job `queue_it` queues; with an `Idempotency-Key`, the first answer
    replayed for a repeat (`api.idempotency`)."""

    async def produce() -> QueuedResponse:
        return queued_response(await queue_it())

    answer = await clients.idempotency.run(
        user_id=user_id,
        key=key,
        path=request.url.path if key is not None else "",  # (a URL built only when used)
        body=body,
        status_code=status.HTTP_202_ACCEPTED,
        produce=produce,
    )
    if not isinstance(answer, QueuedResponse):
        return answer  # a replayed answer, as it was first sent
    # Written once by pydantic, rather than validated again against `response_model`
    # (which stays for the schema) and encoded by FastAPI: the answer is built here.
    return Response(
        answer.model_dump_json(), status.HTTP_202_ACCEPTED, media_type="application/json"
    )
