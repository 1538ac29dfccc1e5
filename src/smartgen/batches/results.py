"""A batch's results, one per input row in input order, read from the store page by page
and written as they are read: CSV or JSON Lines.

CSV cells a spreadsheet would take for a formula (starting with =, +, -, @, a tab or a
carriage return) are written with a leading apostrophe (OWASP's CSV injection advice): a
model's text, or an error echoing a hostile prompt, must not run in the reader's
spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

from smartgen.batches import service
from smartgen.kit import jsoncodec
from smartgen.models import Batch, Job, JobStatus
from smartgen.store.base import Store

FIELDS = ("row", "jobId", "status", "content", "error", "costUsd")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
LINES_PER_CHUNK = 50


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


async def csv_chunks(rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FIELDS)
    count = 0
    async for row in rows:
        writer.writerow(["" if row[f] is None else safe_cell(row[f]) for f in FIELDS])
        count += 1
        if count % LINES_PER_CHUNK == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


async def jsonl_chunks(rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    lines: list[str] = []
    async for row in rows:
        lines.append(jsoncodec.dumps({f: row[f] for f in FIELDS}))
        if len(lines) >= LINES_PER_CHUNK:
            yield ("\n".join(lines) + "\n").encode()
            lines.clear()
    if lines:
        yield ("\n".join(lines) + "\n").encode()


async def result_rows(
    *, store: Store, user_id: str, batch_id: str
) -> AsyncIterator[dict[str, Any]]:
    """One result per input row, in input order: its job's outcome, or why it was
    rejected. Read page by page."""
    batch = await service.get_batch(store=store, user_id=user_id, batch_id=batch_id)
    return _results(store, batch)


async def _results(store: Store, batch: Batch) -> AsyncIterator[dict[str, Any]]:
    rejected = sorted(batch.rejected, key=lambda r: int(r.get("row", 0)))
    r = 0
    after = 0
    while page := await store.batches.jobs_page(
        batch.batch_id, after_row=after, limit=service.PAGE
    ):
        for job in page:
            row = job.batch_row or 0
            while r < len(rejected) and int(rejected[r]["row"]) < row:
                yield _rejected(rejected[r])
                r += 1
            yield _job_result(job)
        after = page[-1].batch_row or after
    for rest in rejected[r:]:
        yield _rejected(rest)


def _rejected(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "row": int(entry["row"]),
        "jobId": None,
        "status": "rejected",
        "content": None,
        "error": entry.get("error"),
        "costUsd": None,
    }


def _job_result(job: Job) -> dict[str, Any]:
    completed = job.status == JobStatus.completed
    return {
        "row": job.batch_row,
        "jobId": job.job_id,
        "status": job.status.value,
        "content": job.generated_content if completed else None,
        "error": job.error if job.status == JobStatus.failed else None,
        "costUsd": job.cost if completed else None,
    }
