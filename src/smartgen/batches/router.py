"""/batches: submit many generations at once (JSON, or a CSV / JSONL file), follow them,
cancel or retry them, download their results."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from smartgen.api.deps import (
    Counted,
    GenerateUser,
    QueueingDep,
    ReadUser,
    StoreDep,
    rate_limits,
)
from smartgen.api.idempotency import KeyHeader
from smartgen.batches import files, results, service
from smartgen.batches.runner import counts_payload
from smartgen.batches.schemas import (
    BatchCancelled,
    BatchCreated,
    BatchJobsPage,
    BatchOut,
    BatchPage,
    BatchRequest,
    BatchRetried,
    RejectedRow,
    batch_out,
)
from smartgen.errors import BadRequest, QueueUnavailable, error_responses
from smartgen.generation.schemas import job_out
from smartgen.models import Batch, BatchCounts

router = APIRouter(
    prefix="/batches", tags=["batches"], responses=error_responses(400, 401, 422, 429)
)
PER_USER = Counted(
    "batches", lambda s: (s.batch_rate_limit, s.generate_rate_window_seconds), "user"
)
create_limit = rate_limits(PER_USER, fail_open=False, unavailable=QueueUnavailable())
REPLAYED = {"description": "Replayed: the first answer to this Idempotency-Key"}
DEFAULT_PAGE = 20
MAX_PAGE = 100
JOBS_DEFAULT_PAGE = 100
JOBS_MAX_PAGE = 500
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BatchRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV with a header row (prompt, contentType, "
                            "and any option; keywords separated by semicolons) or JSON "
                            "Lines, UTF-8",
                        },
                        "delaySeconds": {"type": "number", "minimum": 0},
                        "webhookUrl": {"type": "string", "pattern": "^https?://"},
                    },
                }
            },
        },
    }
}


def _out(batch: Batch, counts: BatchCounts) -> dict[str, Any]:
    return batch_out(batch, counts, counts_payload(batch, counts))


async def _parse(request: Request, max_rows: int) -> BatchRequest:
    """The batch in the body: JSON, or a multipart form with a `file`."""
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    try:
        if content_type.split(";")[0].strip().lower() == "multipart/form-data":
            upload = files.parse_multipart(content_type, body)
            rows = files.read_rows(upload, max_rows=max_rows)
            form = {k: v for k, v in upload.fields.items() if v.strip()}
            return BatchRequest.model_validate({**form, "rows": rows})
        if not body:
            raise BadRequest("Send the batch as JSON or as a multipart form with a `file`")
        return BatchRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]
        ) from None


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[create_limit],
    response_model=BatchCreated,
    responses={200: REPLAYED, **error_responses(402, 409, 413, 415, 503)},
    openapi_extra=UPLOAD_BODY,
)
async def create_batch(
    request: Request, user: GenerateUser, clients: QueueingDep, idempotency_key: KeyHeader = None
) -> Any:
    """Submit up to BATCH_MAX_ROWS generations at once: JSON `{rows, delaySeconds?,
    webhookUrl?}` or a CSV / JSONL `file`; they run BATCH_CONCURRENCY at a time."""
    settings = clients.settings
    body = await _parse(request, settings.batch_max_rows)

    async def produce() -> BatchCreated:
        batch = await service.create_batch(
            store=clients.store,
            runner=clients.turns,
            notifier=clients.notifier,
            settings=settings,
            user_id=user.user_id,
            rows=body.rows,
            delay_seconds=body.delaySeconds,
            webhook_url=body.webhookUrl,
            prices=clients.prices,
            budgets=clients.budgets,
        )
        return BatchCreated(
            batchId=batch.batch_id,
            status=batch.status,
            total=batch.total,
            accepted=batch.accepted,
            rejected=[RejectedRow(**r) for r in batch.rejected],
        )

    return await clients.idempotency.run(
        user_id=user.user_id,
        key=idempotency_key,
        path=request.url.path,
        body=body,
        status_code=status.HTTP_202_ACCEPTED,
        produce=produce,
    )


@router.get("", response_model=BatchPage)
async def list_batches(
    user: ReadUser,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    before: Annotated[str | None, Query(max_length=64, description="nextBefore")] = None,
) -> Any:
    """The caller's batches, newest first, page by page."""
    found = await service.list_batches(
        store=store, user_id=user.user_id, before=before, limit=limit
    )
    return {
        "batches": [_out(b, c) for b, c in found],
        "nextBefore": found[-1][0].batch_id if len(found) == limit else None,
    }


@router.get("/{batchId}", response_model=BatchOut, responses=error_responses(404))
async def get_batch(batchId: str, user: ReadUser, store: StoreDep) -> Any:
    """One of the caller's batches: its jobs by status, progress, cost so far."""
    batch, counts = await service.batch_state(store=store, user_id=user.user_id, batch_id=batchId)
    return _out(batch, counts)


@router.get(
    "/{batchId}/jobs",
    response_model=BatchJobsPage,
    response_model_exclude_none=True,
    responses=error_responses(404),
)
async def batch_jobs(
    batchId: str,
    user: ReadUser,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=JOBS_MAX_PAGE)] = JOBS_DEFAULT_PAGE,
    afterRow: Annotated[int, Query(ge=0, le=10_000_000, description="nextAfterRow")] = 0,
) -> Any:
    """The batch's jobs in input order, page by page."""
    jobs = await service.batch_jobs(
        store=store, user_id=user.user_id, batch_id=batchId, after_row=afterRow, limit=limit
    )
    return {
        "jobs": [job_out(j) for j in jobs],
        "nextAfterRow": jobs[-1].batch_row if len(jobs) == limit else None,
    }


@router.delete("/{batchId}", response_model=BatchCancelled, responses=error_responses(404))
async def cancel_batch(batchId: str, user: GenerateUser, clients: QueueingDep) -> Any:
    """Cancel what has not finished of the batch; its counts after."""
    batch, counts, cancelled = await service.cancel_batch(
        store=clients.store,
        queue=clients.queue,
        notifier=clients.notifier,
        user_id=user.user_id,
        batch_id=batchId,
        runner=clients.turns,
        budgets=clients.budgets,
    )
    return {**_out(batch, counts), "cancelledJobs": cancelled}


@router.post(
    "/{batchId}/retry-failed",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[create_limit],
    response_model=BatchRetried,
    responses=error_responses(402, 404, 503),
)
async def retry_failed(batchId: str, user: GenerateUser, clients: QueueingDep) -> Any:
    """Queue the batch's failed jobs again; they run BATCH_CONCURRENCY at a time."""
    batch, counts, requeued = await service.retry_failed(
        store=clients.store,
        queue=clients.queue,
        runner=clients.turns,
        notifier=clients.notifier,
        settings=clients.settings,
        user_id=user.user_id,
        batch_id=batchId,
        prices=clients.prices,
        budgets=clients.budgets,
    )
    return {**_out(batch, counts), "requeuedJobs": requeued}


@router.get(
    "/{batchId}/results",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One line per input row, in input order: row, jobId, status "
            "(or `rejected`), content, error, costUsd; streamed",
            "content": {"text/csv": {}, "application/x-ndjson": {}},
        },
        **error_responses(404),
    },
)
async def batch_results(
    batchId: str,
    user: ReadUser,
    store: StoreDep,
    format: Annotated[Literal["csv", "jsonl"], Query()] = "csv",
) -> StreamingResponse:
    """The batch's results as CSV or JSON Lines, one row per input row."""
    rows = await results.result_rows(store=store, user_id=user.user_id, batch_id=batchId)
    name = f"batch-{service.parse_batch_id(batchId)}.{format}"
    if format == "csv":
        chunks, media = results.csv_chunks(rows), "text/csv; charset=utf-8"
    else:
        chunks, media = results.jsonl_chunks(rows), "application/x-ndjson"
    return StreamingResponse(
        chunks, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )
