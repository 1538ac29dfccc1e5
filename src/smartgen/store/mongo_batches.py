"""Batches on MongoDB: the `batches` collection, and the batch-wide questions about jobs
(which live in `jobs` with `batchId`, `batchRow`, `batchHeld`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import ConnectionFailure

from smartgen.kit.times import as_utc
from smartgen.models import Batch, BatchCounts, BatchStatus, Job, JobStatus
from smartgen.store.mongo import _job_from_doc, job_doc
from smartgen.store.unavailable import translate_unavailable

_unavailable = translate_unavailable(lambda error: isinstance(error, ConnectionFailure))
_WAITING = {"batchHeld": True, "status": JobStatus.queued.value}


def _dt(value: Any) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


def _batch(doc: dict[str, Any] | None) -> Batch | None:
    if doc is None:
        return None
    return Batch(
        batch_id=doc["batchId"],
        user_id=doc["userId"],
        status=doc["status"],
        total=int(doc["total"]),
        accepted=int(doc["accepted"]),
        rejected=list(doc.get("rejected") or []),
        created_at=as_utc(doc["createdAt"]),
        updated_at=as_utc(doc["updatedAt"]),
        completed_at=_dt(doc.get("completedAt")),
        webhook_url=doc.get("webhookUrl"),
        lock_owner=doc.get("lockOwner"),
        lock_until=_dt(doc.get("lockUntil")),
    )


class MongoBatches:
    def __init__(self, db: Any) -> None:
        self._c = db["batches"]
        self._jobs = db["jobs"]

    @_unavailable
    async def create(self, batch: Batch, jobs: list[Job]) -> None:
        await self._c.insert_one(
            {
                "batchId": batch.batch_id,
                "userId": batch.user_id,
                "status": batch.status,
                "total": batch.total,
                "accepted": batch.accepted,
                "rejected": batch.rejected,
                "createdAt": batch.created_at,
                "updatedAt": batch.updated_at,
                "completedAt": batch.completed_at,
                "webhookUrl": batch.webhook_url,
            }
        )
        if jobs:
            await self._jobs.insert_many([job_doc(job) for job in jobs], ordered=True)

    @_unavailable
    async def get(self, batch_id: str) -> Batch | None:
        return _batch(await self._c.find_one({"batchId": batch_id}))

    @_unavailable
    async def get_for_user(self, batch_id: str, user_id: str) -> Batch | None:
        return _batch(await self._c.find_one({"batchId": batch_id, "userId": user_id}))

    @_unavailable
    async def list_for_user(self, user_id: str, *, before: str | None, limit: int) -> list[Batch]:
        query: dict[str, Any] = {"userId": user_id}
        if before is not None:
            mark = await self._c.find_one({"batchId": before, "userId": user_id})
            if mark is None:
                return []
            query["$or"] = [
                {"createdAt": {"$lt": mark["createdAt"]}},
                {"createdAt": mark["createdAt"], "_id": {"$lt": mark["_id"]}},
            ]
        cursor = self._c.find(query).sort([("createdAt", DESCENDING), ("_id", DESCENDING)])
        return [b for b in [_batch(d) async for d in cursor.limit(limit)] if b is not None]

    @_unavailable
    async def list_running(self, *, limit: int) -> list[Batch]:
        cursor = self._c.find({"status": "running"}).sort([("createdAt", ASCENDING)])
        return [b for b in [_batch(d) async for d in cursor.limit(limit)] if b is not None]

    @_unavailable
    async def lock(self, batch_id: str, *, owner: str, until: datetime, at: datetime) -> bool:
        result = await self._c.update_one(
            {
                "batchId": batch_id,
                "$or": [
                    {"lockOwner": None},
                    {"lockUntil": None},
                    {"lockUntil": {"$lt": at}},
                    {"lockOwner": owner},
                ],
            },
            {"$set": {"lockOwner": owner, "lockUntil": until}},
        )
        return bool(result.matched_count == 1)

    @_unavailable
    async def renew(self, batch_id: str, *, owner: str, until: datetime) -> bool:
        result = await self._c.update_one(
            {"batchId": batch_id, "lockOwner": owner}, {"$set": {"lockUntil": until}}
        )
        return bool(result.matched_count == 1)

    @_unavailable
    async def unlock(self, batch_id: str, *, owner: str) -> None:
        await self._c.update_one(
            {"batchId": batch_id, "lockOwner": owner},
            {"$set": {"lockOwner": None, "lockUntil": None}},
        )

    @_unavailable
    async def finish(self, batch_id: str, *, status: BatchStatus, at: datetime) -> Batch | None:
        doc = await self._c.find_one_and_update(
            {"batchId": batch_id, "status": "running"},
            {"$set": {"status": status, "completedAt": at, "updatedAt": at}},
            return_document=ReturnDocument.AFTER,
        )
        return _batch(doc)

    @_unavailable
    async def reopen(self, batch_id: str, *, at: datetime) -> bool:
        result = await self._c.update_one(
            {"batchId": batch_id, "status": {"$ne": "running"}},
            {"$set": {"status": "running", "completedAt": None, "updatedAt": at}},
        )
        return bool(result.matched_count == 1)

    @_unavailable
    async def counts(self, batch_id: str) -> BatchCounts:
        by_status: dict[str, int] = {}
        waiting, cost = 0, 0.0
        pipeline = [
            {"$match": {"batchId": batch_id}},
            {
                "$group": {
                    "_id": {"status": "$status", "held": {"$ifNull": ["$batchHeld", False]}},
                    "n": {"$sum": 1},
                    "cost": {"$sum": {"$ifNull": ["$cost", 0]}},
                }
            },
        ]
        async for group in await self._jobs.aggregate(pipeline):
            status, count = str(group["_id"]["status"]), int(group["n"])
            by_status[status] = by_status.get(status, 0) + count
            if group["_id"]["held"] and status == JobStatus.queued.value:
                waiting += count
            cost += float(group.get("cost") or 0)
        return BatchCounts(by_status=by_status, waiting=waiting, cost=cost)

    @_unavailable
    async def claim_next(self, batch_id: str, *, at: datetime) -> Job | None:
        doc = await self._jobs.find_one_and_update(
            {"batchId": batch_id, **_WAITING},
            {"$set": {"batchHeld": False, "updatedAt": at}},
            sort=[("batchRow", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return _job_from_doc(doc) if doc else None

    @_unavailable
    async def jobs_page(
        self, batch_id: str, *, after_row: int, limit: int, status: JobStatus | None = None
    ) -> list[Job]:
        query: dict[str, Any] = {"batchId": batch_id, "batchRow": {"$gt": after_row}}
        if status is not None:
            query["status"] = status.value
        cursor = self._jobs.find(query).sort("batchRow", ASCENDING).limit(limit)
        return [_job_from_doc(d) async for d in cursor]

    @_unavailable
    async def cancel_waiting(self, batch_id: str, *, at: datetime) -> list[str]:
        # No multi-document RETURNING: the ids first, then the same filter narrowed to them,
        # then those it changed (a job claimed meanwhile is left running, and not listed).
        query = {"batchId": batch_id, **_WAITING}
        ids = [d["jobId"] async for d in self._jobs.find(query, {"jobId": 1})]
        if not ids:
            return []
        await self._jobs.update_many(
            {**query, "jobId": {"$in": ids}},
            {"$set": {"status": JobStatus.cancelled.value, "cancelledAt": at, "updatedAt": at}},
        )
        done = {"jobId": {"$in": ids}, "status": JobStatus.cancelled.value, "cancelledAt": at}
        return [d["jobId"] async for d in self._jobs.find(done, {"jobId": 1})]

    @_unavailable
    async def delete_for_user(self, user_id: str) -> int:
        return int((await self._c.delete_many({"userId": user_id})).deleted_count)
