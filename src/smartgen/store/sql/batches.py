"""Batches on the SQL stores: the `batches` table's statements and the batch-wide
questions about jobs (PostgreSQL's spelling, rewritten by each driver as the jobs' are),
beside `repository.py`, which builds this repository with the others."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime
from typing import Any

from smartgen.models import Batch, BatchCounts, BatchStatus, Job, JobStatus
from smartgen.store.sql.repository import JOB_COLS, Row, _Repository

_BATCH_FIELDS = [f.name for f in fields(Batch)]
BATCH_COLS = ", ".join(_BATCH_FIELDS)
_BATCH_TIMES = [i for i, name in enumerate(_BATCH_FIELDS) if name.endswith(("_at", "_until"))]
_REJECTED = _BATCH_FIELDS.index("rejected")
_BATCH_JOB_COLUMNS = (
    "job_id, user_id, status, prompt, content_type, scheduled_for, created_at, updated_at, "
    "attempts, options, batch_id, batch_row, batch_held"
)
# The waiting job of the lowest row, taken by one conditional write (a concurrent claim of
# the same row changes nothing and returns no row).
_NEXT_WAITING = (
    "SELECT job_id FROM jobs WHERE batch_id = $1 AND batch_held = 1 AND status = 'queued' "
    "ORDER BY batch_row LIMIT 1"
)

BATCH_STATEMENTS = {
    "batch_insert": (
        f"INSERT INTO batches ({BATCH_COLS}) "
        "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12)"
    ),
    "batch_job_insert": (
        f"INSERT INTO jobs ({_BATCH_JOB_COLUMNS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13::integer)"
    ),
    "batch_by_id": f"SELECT {BATCH_COLS} FROM batches WHERE batch_id = $1",
    "batch_by_id_for_user": (
        f"SELECT {BATCH_COLS} FROM batches WHERE batch_id = $1 AND user_id = $2"
    ),
    "batches_for_user": (
        f"SELECT {BATCH_COLS} FROM batches WHERE user_id = $1 "
        "ORDER BY created_at DESC, id DESC LIMIT $2"
    ),
    "batches_for_user_before": (
        f"SELECT {BATCH_COLS} FROM batches WHERE user_id = $1 AND (created_at, id) < "
        "(SELECT created_at, id FROM batches WHERE batch_id = $3 AND user_id = $1) "
        "ORDER BY created_at DESC, id DESC LIMIT $2"
    ),
    "batches_running": (
        f"SELECT {BATCH_COLS} FROM batches WHERE status = 'running' "
        "ORDER BY created_at, id LIMIT $1"
    ),
    "batch_lock": (
        "UPDATE batches SET lock_owner = $2, lock_until = $3 WHERE batch_id = $1 "
        "AND (lock_owner IS NULL OR lock_until IS NULL OR lock_until < $4 OR lock_owner = $2)"
    ),
    "batch_renew": "UPDATE batches SET lock_until = $3 WHERE batch_id = $1 AND lock_owner = $2",
    "batch_unlock": (
        "UPDATE batches SET lock_owner = NULL, lock_until = NULL "
        "WHERE batch_id = $1 AND lock_owner = $2"
    ),
    "batch_finish": (
        "UPDATE batches SET status = $2, completed_at = $3, updated_at = $3 "
        f"WHERE batch_id = $1 AND status = 'running' RETURNING {BATCH_COLS}"
    ),
    "batch_reopen": (
        "UPDATE batches SET status = 'running', completed_at = NULL, updated_at = $2 "
        "WHERE batch_id = $1 AND status <> 'running'"
    ),
    "batch_counts": (
        "SELECT status, batch_held, count(*), COALESCE(sum(cost), 0) FROM jobs "
        "WHERE batch_id = $1 GROUP BY status, batch_held"
    ),
    "batch_claim_next": (
        "UPDATE jobs SET batch_held = 0, updated_at = $2 "
        f"WHERE job_id = ({_NEXT_WAITING}) AND batch_held = 1 AND status = 'queued' "
        f"RETURNING {JOB_COLS}"
    ),
    "batch_jobs_page": (
        f"SELECT {JOB_COLS} FROM jobs WHERE batch_id = $1 AND batch_row > $2 "
        "ORDER BY batch_row LIMIT $3"
    ),
    "batch_jobs_page_in_status": (
        f"SELECT {JOB_COLS} FROM jobs WHERE batch_id = $1 AND batch_row > $2 AND status = $4 "
        "ORDER BY batch_row LIMIT $3"
    ),
    "batch_cancel_waiting": (
        "UPDATE jobs SET status = 'cancelled', cancelled_at = $2, updated_at = $2 "
        "WHERE batch_id = $1 AND batch_held = 1 AND status = 'queued' RETURNING job_id"
    ),
    "batches_delete_for_user": "DELETE FROM batches WHERE user_id = $1",
}


class Batches(_Repository):
    def _batch(self, row: Row | None) -> Batch | None:
        if row is None:
            return None
        values = self._times(row, _BATCH_TIMES)
        if not isinstance(values[_REJECTED], list):
            values[_REJECTED] = json.loads(values[_REJECTED])
        return Batch(*values)

    def _batches(self, rows: list[Row]) -> list[Batch]:
        return [b for b in (self._batch(r) for r in rows) if b is not None]

    async def create(self, batch: Batch, jobs: list[Job]) -> None:
        ts = self._db.ts
        await self._db.changes(
            self._sql["batch_insert"],
            (
                batch.batch_id, batch.user_id, batch.status, batch.total, batch.accepted,
                json.dumps(batch.rejected), ts(batch.created_at), ts(batch.updated_at),
                ts(batch.completed_at), batch.webhook_url, batch.lock_owner,
                ts(batch.lock_until),
            ),
        )  # fmt: skip
        sql = self._sql["batch_job_insert"]
        for job in jobs:
            await self._db.changes(
                sql,
                (
                    job.job_id, job.user_id, job.status.value, job.prompt, job.content_type,
                    ts(job.scheduled_for), ts(job.created_at), ts(job.updated_at), job.attempts,
                    None if job.options is None else json.dumps(job.options), job.batch_id,
                    job.batch_row, int(job.batch_held),
                ),
            )  # fmt: skip

    async def get(self, batch_id: str) -> Batch | None:
        return self._batch(await self._db.one(self._sql["batch_by_id"], (batch_id,)))

    async def get_for_user(self, batch_id: str, user_id: str) -> Batch | None:
        row = await self._db.one(self._sql["batch_by_id_for_user"], (batch_id, user_id))
        return self._batch(row)

    async def list_for_user(self, user_id: str, *, before: str | None, limit: int) -> list[Batch]:
        if before is None:
            rows = await self._db.all(self._sql["batches_for_user"], (user_id, self._limit(limit)))
        else:
            args = (user_id, self._limit(limit), before)
            rows = await self._db.all(self._sql["batches_for_user_before"], args)
        return self._batches(rows)

    async def list_running(self, *, limit: int) -> list[Batch]:
        rows = await self._db.all(self._sql["batches_running"], (self._limit(limit),))
        return self._batches(rows)

    async def lock(self, batch_id: str, *, owner: str, until: datetime, at: datetime) -> bool:
        args = (batch_id, owner, self._db.ts(until), self._db.ts(at))
        return await self._db.changes(self._sql["batch_lock"], args) == 1

    async def renew(self, batch_id: str, *, owner: str, until: datetime) -> bool:
        args = (batch_id, owner, self._db.ts(until))
        return await self._db.changes(self._sql["batch_renew"], args) == 1

    async def unlock(self, batch_id: str, *, owner: str) -> None:
        await self._db.changes(self._sql["batch_unlock"], (batch_id, owner))

    async def finish(self, batch_id: str, *, status: BatchStatus, at: datetime) -> Batch | None:
        row = await self._db.one(self._sql["batch_finish"], (batch_id, status, self._db.ts(at)))
        return self._batch(row)

    async def reopen(self, batch_id: str, *, at: datetime) -> bool:
        return await self._db.changes(self._sql["batch_reopen"], (batch_id, self._db.ts(at))) == 1

    async def counts(self, batch_id: str) -> BatchCounts:
        by_status: dict[str, int] = {}
        waiting, cost = 0, 0.0
        for status, held, count, spent in await self._db.all(
            self._sql["batch_counts"], (batch_id,)
        ):
            by_status[status] = by_status.get(status, 0) + int(count)
            if held and status == JobStatus.queued.value:
                waiting += int(count)
            cost += float(spent or 0)
        return BatchCounts(by_status=by_status, waiting=waiting, cost=cost)

    async def claim_next(self, batch_id: str, *, at: datetime) -> Job | None:
        row = await self._db.one(self._sql["batch_claim_next"], (batch_id, self._db.ts(at)))
        return self._job(row) if row else None

    async def jobs_page(
        self, batch_id: str, *, after_row: int, limit: int, status: JobStatus | None = None
    ) -> list[Job]:
        args: tuple[Any, ...] = (batch_id, after_row, self._limit(limit))
        if status is None:
            rows = await self._db.all(self._sql["batch_jobs_page"], args)
        else:
            rows = await self._db.all(self._sql["batch_jobs_page_in_status"], (*args, status.value))
        return [self._job(r) for r in rows]

    async def cancel_waiting(self, batch_id: str, *, at: datetime) -> list[str]:
        rows = await self._db.all(self._sql["batch_cancel_waiting"], (batch_id, self._db.ts(at)))
        return [str(r[0]) for r in rows]

    async def delete_for_user(self, user_id: str) -> int:
        return await self._db.changes(self._sql["batches_delete_for_user"], (user_id,))
