"""MAX_UNFINISHED_JOBS on MongoDB: exact under racing submits, with single-document writes.

MongoDB has no insert conditional on other documents, and a standalone server no
transactions, so "count, then insert" lets racing submits of one user all count the same
number and all go in. Each user has an admission document `{_id: userId, v, pending?}`
in `job_admissions`; a capped create of job J runs:

1. read the document: its version `v` and the job still `pending` in it, if any;
2. insert that pending job if it is not in `jobs` yet (helping its submitter: an insert
   by job id, so a second copy is refused by the unique index), then clear it;
3. count the user's unfinished jobs; at the cap, refuse;
4. compare-and-set the document from `v` to `v + 1` with J as `pending` (no match: another
   submit got in since step 1; start again);
5. insert J, then clear it from `pending`.

Why the cap is exact: every admission moves `v`, so step 4 succeeds only if no job was
admitted between steps 1 and 4. Every job admitted before step 1 was inserted before it
left `pending` (its submitter or a helper inserted it, step 2 or 5) or is the `pending`
one, which step 2 inserted; so step 3's count, taken after both, includes them all.

Nothing drifts: the document holds no count (the jobs are counted), only a version and at
most one job in flight. A submitter that dies after step 4 leaves its job `pending`; the
user's next submit inserts it (as if the dead process had: like any job stored but not
queued, the reconciler queues it when due). A submit whose steps race with another's
only starts again; nobody waits on a lock, and nothing expires. The cap off (0) skips all
of this: one insert, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

log = logging.getLogger(__name__)

COLLECTION = "job_admissions"


class Admissions:
    def __init__(self, db: Any, jobs: Any) -> None:
        self._c = db[COLLECTION]
        self._jobs = jobs  # the `jobs` collection

    async def create(
        self, doc: dict[str, Any], count: Callable[[], Awaitable[int]], cap: int
    ) -> bool:
        """Insert the job document `doc` unless its user has `cap` unfinished jobs
        (`count()` counts them)."""
        user = doc["userId"]
        while True:
            state = await self._c.find_one({"_id": user})
            version = int(state["v"]) if state else 0
            pending = state.get("pending") if state else None
            if pending is not None:
                await self._help(user, pending)
            if await count() >= cap:
                return False
            if await self._advance(user, version, doc):
                break
        await self._insert(doc)
        await self._c.update_one({"_id": user, "pending.jobId": doc["jobId"]}, _CLEAR)
        return True

    async def _advance(self, user: str, version: int, doc: dict[str, Any]) -> bool:
        change = {"$set": {"v": version + 1, "pending": doc}}
        if version == 0:  # no document yet: the first to create it wins, the rest retry
            try:
                await self._c.insert_one({"_id": user, "v": 1, "pending": doc})
            except DuplicateKeyError:
                return False
            return True
        result = await self._c.update_one({"_id": user, "v": version}, change)
        return bool(result.matched_count == 1)

    async def _insert(self, doc: dict[str, Any]) -> None:
        try:
            await self._jobs.insert_one(dict(doc))
        except DuplicateKeyError:
            # A helper inserted it first; anything else with this job id is a real clash.
            existing = await self._jobs.find_one({"jobId": doc["jobId"]})
            mine = existing is not None and all(
                existing.get(k) == doc[k] for k in ("userId", "prompt", "contentType")
            )
            if not mine:
                raise

    async def _help(self, user: str, pending: dict[str, Any]) -> None:
        """Insert another submit's admitted job (it may be in flight, or its submitter
        gone), then clear it."""
        try:
            await self._insert(pending)
        except ConnectionFailure:
            raise
        except PyMongoError as error:
            # Refused for good (its submitter met the same refusal and reported it).
            log.warning("admitted job %s cannot be inserted: %s", pending.get("jobId"), error)
        await self._c.update_one({"_id": user, "pending.jobId": pending["jobId"]}, _CLEAR)

    async def forget(self, user: str) -> None:
        await self._c.delete_one({"_id": user})


_CLEAR = {"$unset": {"pending": ""}}
