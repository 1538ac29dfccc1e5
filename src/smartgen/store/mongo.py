"""MongoDB store on PyMongo's native async API. With `mongo_voices.py` (brand voices), the
only code that speaks to MongoDB."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

from smartgen.errors import Conflict, StoreUnavailable
from smartgen.kit.batching import WORKER_SPACING, Coalescer
from smartgen.kit.times import as_utc, utcnow
from smartgen.models import (
    RETRYABLE,
    UNFINISHED,
    Completion,
    Job,
    JobStatus,
    UsageRow,
    User,
    usage_numbers,
)
from smartgen.store import mongo_io
from smartgen.store.base import (
    ApiKeyRepository,
    BatchRepository,
    ContentRepository,
    JobRepository,
    UserRepository,
    VoiceRepository,
    WebhookRepository,
)
from smartgen.store.mongo_contents import MongoContents, page_after
from smartgen.store.mongo_keys import MongoApiKeys
from smartgen.store.mongo_voices import MongoVoices
from smartgen.store.mongo_webhooks import MongoWebhooks
from smartgen.store.unavailable import translate_unavailable

_UNFINISHED = [status.value for status in UNFINISHED]
# Unfinished jobs counted per user, the ones a batch holds back left out (they count once
# released). The match is the (userId, status) index's alone and the held ones are left
# out as they are counted: a `batchHeld` clause in the match costs MongoDB the same
# (each matched job is read either way), and costs SecantusDB, the MongoDB wire-protocol
# server the bench runs on, a scan of the whole collection (bench/HISTORY.md, twelfth
# round).
_COUNT_UNHELD = {"$sum": {"$cond": [{"$eq": ["$batchHeld", True]}, 0, 1]}}
_RETRYABLE = [status.value for status in RETRYABLE]

_unavailable = translate_unavailable(lambda error: isinstance(error, ConnectionFailure))
log = logging.getLogger(__name__)


def _dt(value: Any) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


def _ms(at: datetime) -> datetime:
    """A time as BSON keeps it (milliseconds), to compare with what a write stored."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class _Take:
    job_id: str
    at: datetime
    attempt: int
    lease_until: datetime | None
    owner: str | None
    due_by: datetime | None
    expected: Job | None = None  # the job as stored, if the caller has a copy


def _job_from_doc(doc: dict[str, Any]) -> Job:
    return Job(
        job_id=doc["jobId"],
        user_id=str(doc["userId"]),
        status=JobStatus(doc["status"]),
        prompt=doc.get("prompt", ""),
        content_type=doc.get("contentType", ""),
        scheduled_for=as_utc(doc["scheduledFor"]),
        created_at=as_utc(doc["createdAt"]),
        updated_at=as_utc(doc.get("updatedAt") or doc["createdAt"]),
        started_at=_dt(doc.get("startedAt")),
        completed_at=_dt(doc.get("completedAt")),
        failed_at=_dt(doc.get("failedAt")),
        generated_content=doc.get("generatedContent"),
        error=doc.get("error"),
        model=doc.get("model"),
        usage=doc.get("usage"),
        attempts=int(doc.get("attempts") or 0),
        lease_until=_dt(doc.get("leaseUntil")),
        lease_owner=doc.get("leaseOwner"),
        cancelled_at=_dt(doc.get("cancelledAt")),
        history=doc.get("history"),
        finish_reason=doc.get("finishReason"),
        options=doc.get("options"),
        parent_job_id=doc.get("parentJobId"),
        cost=None if doc.get("cost") is None else float(doc["cost"]),
        batch_id=doc.get("batchId"),
        batch_row=doc.get("batchRow"),
        batch_held=bool(doc.get("batchHeld")),
        **_feedback_fields(doc.get("feedback")),
    )


def _feedback_fields(feedback: Any) -> dict[str, Any]:
    if not isinstance(feedback, dict) or feedback.get("rating") is None:
        return {}
    return {
        "feedback_rating": feedback["rating"],
        "feedback_comment": feedback.get("comment"),
        "feedback_at": _dt(feedback.get("at")),
    }


def job_doc(job: Job) -> dict[str, Any]:
    """A new job's document: the fields every store writes at creation."""
    doc = {
        "jobId": job.job_id,
        "userId": job.user_id,
        "status": job.status.value,
        "prompt": job.prompt,
        "contentType": job.content_type,
        "scheduledFor": job.scheduled_for,
        "createdAt": job.created_at,
        "updatedAt": job.updated_at,
        "attempts": job.attempts,
        "options": job.options,
        "parentJobId": job.parent_job_id,
    }
    if job.batch_id is not None:
        doc.update(batchId=job.batch_id, batchRow=job.batch_row, batchHeld=job.batch_held)
    return doc


# GET /usage's groups, as aggregation expressions over a job document.
_USAGE_KEYS: dict[str, Any] = {
    "day": {"$dateToString": {"format": "%Y-%m-%d", "date": "$createdAt"}},
    "contentType": "$contentType",
    "model": "$model",
}


class MongoUsers:
    def __init__(self, db: Any) -> None:
        self._c = db["users"]

    @_unavailable
    async def create(self, user: User) -> None:
        try:
            await self._c.insert_one(
                {
                    "_id": ObjectId(user.user_id),
                    "email": user.email,
                    "passwordHash": user.password_hash,
                    "createdAt": user.created_at,
                    "updatedAt": user.created_at,
                }
            )
        except DuplicateKeyError:
            raise Conflict(
                "An account with this email already exists", code="email_taken"
            ) from None

    @staticmethod
    def _from_doc(doc: dict[str, Any] | None) -> User | None:
        if doc is None:
            return None
        return User(
            user_id=str(doc["_id"]),
            email=doc["email"],
            # A Node app sharing the collection may call it `password`.
            password_hash=doc.get("passwordHash") or doc.get("password") or "",
            created_at=as_utc(doc.get("createdAt") or ObjectId(doc["_id"]).generation_time),
        )

    @_unavailable
    async def get(self, user_id: str) -> User | None:
        try:
            oid = ObjectId(user_id)
        except (InvalidId, TypeError):
            return None
        return self._from_doc(await self._c.find_one({"_id": oid}))

    @_unavailable
    async def get_by_email(self, email: str) -> User | None:
        return self._from_doc(await self._c.find_one({"email": email}))

    @_unavailable
    async def set_password(self, user_id: str, password_hash: str) -> bool:
        try:
            oid = ObjectId(user_id)
        except (InvalidId, TypeError):
            return False
        # `passwordHash` is read first; a Node app's own `password` field is left as it is.
        update = {"$set": {"passwordHash": password_hash, "updatedAt": utcnow()}}
        res = await self._c.update_one({"_id": oid}, update)
        return bool(res.matched_count == 1)

    @_unavailable
    async def delete(self, user_id: str) -> bool:
        try:
            oid = ObjectId(user_id)
        except (InvalidId, TypeError):
            return False
        return bool((await self._c.delete_one({"_id": oid})).deleted_count == 1)


class MongoJobs:
    """Concurrent `create` calls go together (`batching.Coalescer`, the SQL stores' bounds):
    one count of the batch's users' unfinished jobs and one `insert_many`, each job's cap
    applied as if the jobs went in one by one, in arrival order. Alone, a create is a count
    and an insert, as before: MongoDB has no insert conditional on other documents (short
    of a transaction, which a standalone server does not offer). One group is out at a
    time, so one process's creates hold the cap exactly; creates racing through several
    processes can pass it by as many as were in flight."""

    BATCH = 64

    def __init__(self, db: Any) -> None:
        self._c = db["jobs"]
        self.inserts: Coalescer[tuple[Job, int], bool] = Coalescer(
            self._create_batch, max_batch=self.BATCH
        )
        # The worker's concurrent takes and completions likewise (as the SQL stores'),
        # spaced as the worker's per-job round trips are (`batching.WORKER_SPACING`).
        self.takes: Coalescer[_Take, Job | None] = Coalescer(
            self._take_batch, max_batch=self.BATCH, spacing=WORKER_SPACING
        )
        self.completions: Coalescer[tuple[str, Completion, datetime], bool] = Coalescer(
            self._complete_batch, max_batch=self.BATCH, spacing=WORKER_SPACING
        )

    async def create(self, job: Job, *, max_unfinished: int = 0) -> bool:
        return await self.inserts.submit((job, max_unfinished))

    @_unavailable
    async def _create_batch(self, rows: list[tuple[Job, int]]) -> list[bool | Exception]:
        if len(rows) == 1:
            job, cap = rows[0]
            if cap > 0 and await self.count_unfinished(job.user_id) >= cap:
                return [False]
            await self._c.insert_one(job_doc(job))
            return [True]
        counted = sorted({job.user_id for job, cap in rows if cap > 0})
        unfinished: dict[str, int] = {}
        if counted:
            unfinished = await self._unfinished({"$in": counted})
        outcomes: list[bool | Exception] = []
        docs: list[dict[str, Any]] = []
        for job, cap in rows:
            held = unfinished.get(job.user_id, 0)
            if cap > 0 and held >= cap:
                outcomes.append(False)
                continue
            if job.status.value in _UNFINISHED and not job.batch_held:
                unfinished[job.user_id] = held + 1
            outcomes.append(True)
            docs.append(job_doc(job))
        if not docs:
            return outcomes
        try:
            await self._c.insert_many(docs, ordered=False)
        except BulkWriteError as error:  # some went in: each refused one fails alone
            refused = {e["index"]: e for e in error.details.get("writeErrors", [])}
            inserted = [i for i, ok in enumerate(outcomes) if ok is True]
            for position, row in enumerate(inserted):
                if position in refused:
                    found = refused[position]
                    outcomes[row] = (
                        DuplicateKeyError(found.get("errmsg", ""), found.get("code"))
                        if found.get("code") == 11000
                        else OperationFailure(found.get("errmsg", ""), found.get("code"))
                    )
        return outcomes

    @_unavailable
    async def get(self, job_id: str) -> Job | None:
        doc = await self._c.find_one({"jobId": job_id})
        return _job_from_doc(doc) if doc else None

    @_unavailable
    async def get_for_user(self, job_id: str, user_id: str) -> Job | None:
        doc = await self._c.find_one({"jobId": job_id, "userId": user_id})
        return _job_from_doc(doc) if doc else None

    @_unavailable
    async def list_for_user(
        self, user_id: str, *, limit: int, status: JobStatus | None = None
    ) -> list[Job]:
        query: dict[str, Any] = {"userId": user_id}
        if status is not None:
            query["status"] = status.value
        cursor = self._c.find(query).sort([("createdAt", DESCENDING), ("_id", DESCENDING)])
        return [_job_from_doc(d) async for d in cursor.limit(limit)]

    @_unavailable
    async def list_changed_since(self, user_id: str, since: datetime, *, limit: int) -> list[Job]:
        cursor = self._c.find({"userId": user_id, "updatedAt": {"$gt": since}})
        cursor = cursor.sort("updatedAt", ASCENDING).limit(limit)
        return [_job_from_doc(d) async for d in cursor]

    @_unavailable
    async def count_unfinished(self, user_id: str) -> int:
        return (await self._unfinished(user_id)).get(user_id, 0)

    async def _unfinished(self, users: Any) -> dict[str, int]:
        """Unfinished jobs not held by a batch, per user of `users` (a user id or an
        `$in`); a user with none is absent."""
        match = {"userId": users, "status": {"$in": _UNFINISHED}}
        group = {"_id": "$userId", "n": _COUNT_UNHELD}
        cursor = await self._c.aggregate([{"$match": match}, {"$group": group}])
        return {str(d["_id"]): int(d["n"]) async for d in cursor if d["n"]}

    @_unavailable
    async def list_unfinished_due(self, due_before: datetime, *, limit: int) -> list[Job]:
        cursor = self._c.find(
            {
                "status": {"$in": _UNFINISHED},
                "scheduledFor": {"$lt": due_before},
                "batchHeld": {"$ne": True},
            }
        )
        return [_job_from_doc(d) async for d in cursor.limit(limit)]

    @_unavailable
    async def list_past_lease(self, at: datetime, *, limit: int) -> list[Job]:
        cursor = self._c.find(
            {
                "status": JobStatus.processing.value,
                # no lease (null or missing) or one that ran out: the same as a top-level
                # `$or` of the two, which SecantusDB answers by scanning the collection
                "leaseUntil": {"$not": {"$gte": at}},
            }
        ).sort([("startedAt", ASCENDING), ("_id", ASCENDING)])
        return [_job_from_doc(d) async for d in cursor.limit(limit)]

    async def mark_processing(
        self,
        job_id: str,
        *,
        at: datetime,
        attempt: int,
        lease_until: datetime | None = None,
        owner: str | None = None,
        due_by: datetime | None = None,
        expected: Job | None = None,
    ) -> Job | None:
        if expected is not None and (
            expected.job_id != job_id or expected.status != JobStatus.queued
        ):
            expected = None
        return await self.takes.submit(
            _Take(job_id, _ms(at), attempt, lease_until, owner, due_by, expected)
        )

    @staticmethod
    def _unchanged(take: _Take) -> dict[str, Any] | None:
        """With the caller's copy of the queued job: the filter that takes it only while
        it is still exactly that copy. Every write to a job moves its `updatedAt`, so a job
        still queued with the copy's `updatedAt` is the copy, and the take needs no read."""
        if take.expected is None:
            return None
        query: dict[str, Any] = {
            "jobId": take.job_id,
            "status": JobStatus.queued.value,
            "updatedAt": take.expected.updated_at,
        }
        if take.due_by is not None:
            query["scheduledFor"] = {"$lte": take.due_by}
        return query

    @staticmethod
    def _as_taken(take: _Take) -> Job:
        """The caller's copy as the take wrote it."""
        assert take.expected is not None
        return replace(
            take.expected,
            status=JobStatus.processing,
            started_at=take.at,
            updated_at=take.at,
            attempts=take.attempt,
            lease_until=None if take.lease_until is None else _ms(take.lease_until),
            lease_owner=take.owner,
        )

    @staticmethod
    def _take_filters(take: _Take) -> list[dict[str, Any]]:
        """The states a job can be taken from, one filter each, the usual one (queued)
        first: a job is taken when one of them matches. Each is plain conditions on the
        job's own fields, which the `jobId` index serves; one filter with a top-level
        `$or` of them would mean the same, but SecantusDB (the MongoDB wire-protocol
        server the seed runs on) scans the whole collection for any top-level operator:
        16 ms a take at 2,000 jobs against 1.6 ms."""
        base: dict[str, Any] = {"jobId": take.job_id}
        if take.due_by is not None:
            base["scheduledFor"] = {"$lte": take.due_by}
        processing = JobStatus.processing.value
        filters = [
            {**base, "status": JobStatus.queued.value},
            {**base, "status": processing, "leaseUntil": {"$lte": take.at}},
            {**base, "status": processing, "leaseUntil": None},  # None also matches missing
        ]
        if take.owner is not None:
            filters.append({**base, "status": processing, "leaseOwner": take.owner})
        return filters

    @staticmethod
    def _take_set(take: _Take) -> dict[str, Any]:
        return {
            "$set": {
                "status": JobStatus.processing.value,
                "startedAt": take.at,
                "updatedAt": take.at,
                "attempts": take.attempt,
                "leaseUntil": take.lease_until,
                "leaseOwner": take.owner,
            }
        }

    async def _take_one(self, take: _Take, filters: list[dict[str, Any]]) -> Job | None:
        # Each filter is one atomic conditional update: the first that matches takes the
        # job, as one update with all of them would have. The job is read back unless it
        # was the caller's unchanged copy.
        update = self._take_set(take)
        unchanged = self._unchanged(take)
        if unchanged is not None and (await self._c.update_one(unchanged, update)).matched_count:
            return self._as_taken(take)
        for query in filters:
            if (await self._c.update_one(query, update)).matched_count == 1:
                return await self.get(take.job_id)
        return None

    @_unavailable
    async def _take_batch(self, takes: list[_Take]) -> list[Job | None]:
        # update + read instead of find_one_and_update: the test server scans the whole
        # collection for the latter, and the conditional filter alone gives the guarantee.
        if len(takes) == 1:
            return [await self._take_one(takes[0], self._take_filters(takes[0]))]
        # Several at once: one bulk write of the usual case (queued), in order, and one
        # read. A take went through when the job reads as it wrote it (its owner, start
        # and attempt): a job that was not takeable still shows its earlier start. A job
        # found processing may be one whose lease ran out (or this worker's own): those
        # few try the other states one by one.
        filters = [self._take_filters(t) for t in takes]
        firsts = [self._unchanged(t) or f[0] for t, f in zip(takes, filters, strict=True)]
        writes = [UpdateOne(q, self._take_set(t)) for t, q in zip(takes, firsts, strict=True)]
        result = await self._c.bulk_write(writes, ordered=True)
        if result.matched_count == len(takes) and all(t.expected is not None for t in takes):
            # Each matched its own unchanged copy (a job matches once: it is then taken).
            return [self._as_taken(t) for t in takes]
        ids = list({t.job_id for t in takes})
        docs = {d["jobId"]: d async for d in self._c.find({"jobId": {"$in": ids}})}
        outcomes: list[Job | None] = []
        for take, others in zip(takes, filters, strict=True):
            doc = docs.get(take.job_id)
            if doc is not None and self._took(take, doc):
                outcomes.append(_job_from_doc(doc))
            elif doc is not None and (
                doc.get("status") == JobStatus.processing.value
                or (take.expected is not None and doc.get("status") == JobStatus.queued.value)
            ):
                # Taken from a state other than the first filter's; or not the caller's
                # copy any more (changed while queued): the usual filters then.
                rest = others if take.expected is not None else others[1:]
                taken = await self._take_one(replace(take, expected=None), rest)
                outcomes.append(taken)
                if taken is not None:  # later takes of this job see the new state
                    docs[take.job_id] = {**doc, **self._take_set(take)["$set"]}
            else:
                outcomes.append(None)
        return outcomes

    @staticmethod
    def _took(take: _Take, doc: dict[str, Any]) -> bool:
        return bool(
            doc.get("status") == JobStatus.processing.value
            and doc.get("leaseOwner") == take.owner
            and _dt(doc.get("startedAt")) == take.at
            and doc.get("attempts") == take.attempt
        )

    async def mark_completed(self, job_id: str, *, result: Completion, at: datetime) -> bool:
        return await self.completions.submit((job_id, result, _ms(at)))

    @staticmethod
    def _completion_update(
        job_id: str, result: Completion, at: datetime
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        prompt, completion, total, cost = usage_numbers(result.usage)
        return (
            {"jobId": job_id, "status": JobStatus.processing.value},
            {
                "$set": {
                    "status": JobStatus.completed.value,
                    "generatedContent": result.content,
                    "model": result.model,
                    "usage": result.usage,
                    "finishReason": result.finish_reason,
                    "completedAt": at,
                    "updatedAt": at,
                    # Flat numbers, so that GET /usage sums fields rather than parses.
                    "cost": cost,
                    "promptTokens": prompt,
                    "completionTokens": completion,
                    "totalTokens": total,
                },
                "$unset": {"error": ""},
            },
        )

    @_unavailable
    async def _complete_batch(self, calls: list[tuple[str, Completion, datetime]]) -> list[bool]:
        if len(calls) == 1:
            res = await self._c.update_one(*self._completion_update(*calls[0]))
            return [bool(res.matched_count == 1)]
        # Several at once: one bulk write, in order. When each matched (the usual case),
        # that is all; else one read tells which did: a completion that went through reads
        # as it wrote (its time and text).
        written = await self._c.bulk_write(
            [UpdateOne(*self._completion_update(*c)) for c in calls], ordered=True
        )
        if written.matched_count == len(calls):
            return [True] * len(calls)
        ids = list({job_id for job_id, _, _ in calls})
        docs = {d["jobId"]: d async for d in self._c.find({"jobId": {"$in": ids}})}
        outcomes: list[bool] = []
        claimed: set[str] = set()
        for job_id, result, at in calls:
            doc = docs.get(job_id)
            done = (
                job_id not in claimed
                and doc is not None
                and doc.get("status") == JobStatus.completed.value
                and _dt(doc.get("completedAt")) == at
                and doc.get("generatedContent") == result.content
            )
            if done:
                claimed.add(job_id)  # of two completions of one job, the first went through
            outcomes.append(done)
        return outcomes

    @_unavailable
    async def mark_failed(self, job_id: str, *, error: str, at: datetime) -> bool:
        res = await self._c.update_one(
            {"jobId": job_id, "status": {"$in": _UNFINISHED}},
            {
                "$set": {
                    "status": JobStatus.failed.value,
                    "error": error,
                    "failedAt": at,
                    "updatedAt": at,
                }
            },
        )
        return bool(res.matched_count == 1)

    @_unavailable
    async def delete(self, job_id: str) -> None:
        await self._c.delete_one({"jobId": job_id})

    @_unavailable
    async def release_lease(self, job_id: str, *, owner: str) -> bool:
        res = await self._c.update_one(
            {"jobId": job_id, "status": JobStatus.processing.value, "leaseOwner": owner},
            {"$set": {"leaseUntil": None}},
        )
        return bool(res.matched_count == 1)

    @_unavailable
    async def release_leases_of(self, worker: str, *, limit: int) -> list[Job]:
        held = {
            "status": JobStatus.processing.value,
            "leaseOwner": {"$regex": "@" + re.escape(worker) + "$"},
        }
        docs = [d async for d in self._c.find(held).limit(limit)]
        if not docs:
            return []
        # The same filter again: a lease taken over meanwhile stays with its new owner.
        await self._c.update_many(
            {**held, "jobId": {"$in": [d["jobId"] for d in docs]}},
            {"$set": {"leaseUntil": None}},
        )
        return [_job_from_doc({**d, "leaseUntil": None}) for d in docs]

    @_unavailable
    async def page_for_user(self, user_id: str, *, after: str | None, limit: int) -> list[Job]:
        query = await page_after(self._c, {"userId": user_id}, "jobId", after)
        if query is None:
            return []
        order = [("createdAt", ASCENDING), ("_id", ASCENDING)]
        return [_job_from_doc(d) async for d in self._c.find(query).sort(order).limit(limit)]

    @_unavailable
    async def delete_for_user(self, user_id: str) -> int:
        return int((await self._c.delete_many({"userId": user_id})).deleted_count)

    async def _changed(self, query: dict[str, Any], update: dict[str, Any]) -> Job | None:
        # update_one + read (see mark_processing): the filter alone decides.
        if (await self._c.update_one(query, update)).matched_count == 0:
            return None
        doc = await self._c.find_one({"jobId": query["jobId"]})
        return _job_from_doc(doc) if doc else None

    @_unavailable
    async def cancel(self, job_id: str, user_id: str, *, at: datetime) -> Job | None:
        return await self._changed(
            {"jobId": job_id, "userId": user_id, "status": {"$in": _UNFINISHED}},
            {
                "$set": {
                    "status": JobStatus.cancelled.value,
                    "cancelledAt": at,
                    "updatedAt": at,
                    "leaseUntil": None,
                    "leaseOwner": None,
                }
            },
        )

    @_unavailable
    async def reschedule(
        self,
        job_id: str,
        user_id: str,
        *,
        scheduled_for: datetime,
        at: datetime,
        prompt: str | None = None,
        content_type: str | None = None,
        release: bool = False,
    ) -> Job | None:
        changes: dict[str, Any] = {"scheduledFor": scheduled_for, "updatedAt": at}
        if release:
            changes["batchHeld"] = False
        if prompt is not None:
            changes["prompt"] = prompt
        if content_type is not None:
            changes["contentType"] = content_type
        return await self._changed(
            {"jobId": job_id, "userId": user_id, "status": JobStatus.queued.value},
            {"$set": changes},
        )

    @_unavailable
    async def requeue(
        self,
        job_id: str,
        user_id: str,
        *,
        scheduled_for: datetime,
        at: datetime,
        history: list[dict[str, Any]],
        held: bool = False,
    ) -> Job | None:
        cleared = (
            "error", "failedAt", "cancelledAt", "startedAt", "completedAt",
            "generatedContent", "model", "usage", "leaseUntil", "leaseOwner",
            "finishReason",
            "cost", "promptTokens", "completionTokens", "totalTokens",
        )  # fmt: skip
        return await self._changed(
            {"jobId": job_id, "userId": user_id, "status": {"$in": _RETRYABLE}},
            {
                "$set": {
                    "status": JobStatus.queued.value,
                    "scheduledFor": scheduled_for,
                    "updatedAt": at,
                    "history": history,
                    "batchHeld": held,
                },
                "$unset": {name: "" for name in cleared},
            },
        )

    @_unavailable
    async def restore(self, job: Job) -> bool:
        values: dict[str, Any] = {
            "status": job.status.value,
            "scheduledFor": job.scheduled_for,
            "updatedAt": job.updated_at,
            "prompt": job.prompt,
            "contentType": job.content_type,
            "history": job.history,
            "error": job.error,
            "failedAt": job.failed_at,
            "cancelledAt": job.cancelled_at,
            "startedAt": job.started_at,
            "completedAt": job.completed_at,
            "generatedContent": job.generated_content,
            "model": job.model,
            "usage": job.usage,
        }
        result = await self._c.update_one(
            {"jobId": job.job_id, "status": JobStatus.queued.value}, {"$set": values}
        )
        return bool(result.matched_count == 1)

    @_unavailable
    async def variation_ids(self, job_id: str, user_id: str, *, limit: int) -> list[str]:
        cursor = self._c.find({"parentJobId": job_id, "userId": user_id}, {"jobId": 1})
        cursor = cursor.sort([("createdAt", ASCENDING), ("_id", ASCENDING)]).limit(limit)
        return [str(d["jobId"]) async for d in cursor]

    @_unavailable
    async def usage(
        self, user_id: str, *, start: datetime, end: datetime, group_by: str
    ) -> list[UsageRow]:
        statuses = [s.value for s in JobStatus]
        group: dict[str, Any] = {"_id": _USAGE_KEYS[group_by], "jobs": {"$sum": 1}}
        for status in statuses:
            group[status] = {"$sum": {"$cond": [{"$eq": ["$status", status]}, 1, 0]}}
        for name in ("promptTokens", "completionTokens", "totalTokens", "cost"):
            group[name] = {"$sum": {"$ifNull": [f"${name}", 0]}}
        group["priced"] = {"$sum": {"$cond": [{"$eq": [{"$ifNull": ["$cost", None]}, None]}, 0, 1]}}
        for name, rating in (("liked", "like"), ("disliked", "dislike")):
            group[name] = {"$sum": {"$cond": [{"$eq": ["$feedback.rating", rating]}, 1, 0]}}
        pipeline = [
            {"$match": {"userId": user_id, "createdAt": {"$gte": start, "$lt": end}}},
            {"$group": group},
        ]
        rows = [
            UsageRow(
                key=None if d["_id"] is None else str(d["_id"]),
                jobs=int(d["jobs"]),
                by_status={s: int(d.get(s) or 0) for s in statuses},
                prompt_tokens=int(d.get("promptTokens") or 0),
                completion_tokens=int(d.get("completionTokens") or 0),
                total_tokens=int(d.get("totalTokens") or 0),
                cost=float(d.get("cost") or 0),
                priced_jobs=int(d.get("priced") or 0),
                liked=int(d.get("liked") or 0),
                disliked=int(d.get("disliked") or 0),
            )
            async for d in await self._c.aggregate(pipeline)
        ]
        return sorted(rows, key=lambda r: (r.key is None, r.key or ""))

    @_unavailable
    async def set_feedback(
        self, job_id: str, user_id: str, *, rating: str, comment: str | None, at: datetime
    ) -> Job | None:
        return await self._changed(
            {"jobId": job_id, "userId": user_id, "status": JobStatus.completed.value},
            {"$set": {"feedback": {"rating": rating, "comment": comment, "at": at}}},
        )

    @_unavailable
    async def clear_feedback(self, job_id: str, user_id: str) -> bool:
        res = await self._c.update_one(
            {"jobId": job_id, "userId": user_id, "feedback.rating": {"$ne": None}},
            {"$unset": {"feedback": ""}},
        )
        return bool(res.matched_count == 1)


class MongoStore:
    name = "mongodb"

    def __init__(
        self, uri: str, database: str, *, timeout_ms: int = 5000, lean_io: bool = True
    ) -> None:
        mongo_io.lean_io(lean_io)  # for the whole process (store/mongo_io.py)
        # Bound to the running event loop: create inside the lifespan / worker start-up.
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            appname="smartgen",
        )
        db = self._client[database]
        self._db = db
        self.users: UserRepository = MongoUsers(db)
        self.jobs: JobRepository = MongoJobs(db)
        self._contents = MongoContents(db)
        self.contents: ContentRepository = self._contents
        self.voices: VoiceRepository = MongoVoices(db)
        from smartgen.store.mongo_batches import MongoBatches  # it reads jobs as this does

        self.batches: BatchRepository = MongoBatches(db)
        self.api_keys: ApiKeyRepository = MongoApiKeys(db)
        self.webhooks: WebhookRepository = MongoWebhooks(db)

    @_unavailable
    async def init(self) -> None:
        await self._db["jobs"].create_index("jobId", unique=True)
        await self._db["jobs"].create_index([("userId", ASCENDING), ("createdAt", DESCENDING)])
        await self._db["jobs"].create_index([("userId", ASCENDING), ("updatedAt", ASCENDING)])
        await self._db["jobs"].create_index([("status", ASCENDING), ("scheduledFor", ASCENDING)])
        await self._db["jobs"].create_index([("userId", ASCENDING), ("status", ASCENDING)])
        await self._db["contents"].create_index([("userId", ASCENDING), ("createdAt", DESCENDING)])
        await self._db["contents"].create_index("jobId", unique=True)
        await self._db["contents"].create_index("contentId", unique=True)
        await self._db["users"].create_index("email", unique=True)
        await self._db["jobs"].create_index("parentJobId", sparse=True)
        await self._db["voices"].create_index("voiceId", unique=True)
        await self._db["voices"].create_index([("userId", ASCENDING), ("createdAt", DESCENDING)])
        await self._db["jobs"].create_index([("batchId", ASCENDING), ("batchRow", ASCENDING)])
        await self._db["batches"].create_index("batchId", unique=True)
        await self._db["batches"].create_index([("userId", ASCENDING), ("createdAt", DESCENDING)])
        await self._db["batches"].create_index([("status", ASCENDING), ("createdAt", ASCENDING)])
        await self._db["contents"].create_index(
            [("userId", ASCENDING), ("createdAt", DESCENDING), ("contentId", DESCENDING)]
        )
        await self._db["contents"].create_index([("userId", ASCENDING), ("tags", ASCENDING)])
        await self._text_index()
        await MongoApiKeys.create_indexes(self._db)
        await MongoWebhooks.create_indexes(self._db)

    async def _text_index(self) -> None:
        """The library's search index: title and body, language "none" (lower-cased words,
        no stemming or stop words, as the SQL stores match). Contents written before it
        are indexed by the server as it builds it. A server without text indexes (a
        MongoDB-compatible one) is searched by `$regex` instead."""
        try:
            await self._db["contents"].create_index(
                [("title", "text"), ("body", "text")],
                name="contents_text",
                default_language="none",
            )
        except OperationFailure as error:
            log.warning(
                "MongoDB refused the contents' text index (%s): library search scans with "
                "$regex instead",
                error,
            )
            self._contents.text_index = False
        else:
            self._contents.text_index = True

    async def ping(self) -> None:
        try:
            await self._client.admin.command("ping")
        except PyMongoError as exc:
            raise StoreUnavailable("MongoDB does not answer") from exc

    async def close(self) -> None:
        await self._client.close()
