"""The repositories of the two SQL stores, written once.

`postgres.py` (asyncpg) and `sqlite.py` (sqlite3) each supply a `Driver`: how to run one
statement, how to write a datetime and read it back, what "no limit" is, which error means
a unique index refused a row. The statements are written once here, in PostgreSQL's
spelling (`$1` parameters, `::type` casts); a driver rewrites them for its database once,
when the store is built.

Every statement autocommits, so a call is one round trip and never leaves a transaction
open. State transitions are single conditional `UPDATE … WHERE status …` statements judged
by their row count; uniqueness comes from unique indexes (email, job id, one content per
job). The tables are `schema.py`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, Protocol

from smartgen.errors import Conflict
from smartgen.kit.batching import WORKER_SPACING, Coalescer
from smartgen.kit.times import utcnow
from smartgen.models import (
    RETRYABLE,
    Completion,
    Content,
    Job,
    JobStatus,
    UsageRow,
    User,
    usage_numbers,
)
from smartgen.models import UNFINISHED as UNFINISHED_STATUSES
from smartgen.store.base import (
    ApiKeyRepository,
    BatchRepository,
    ContentRepository,
    JobRepository,
    UserRepository,
    VoiceRepository,
    WebhookRepository,
)
from smartgen.store.sql.schema import Dialect
from smartgen.store.sql.url import SqlUrl, parse_database_url

Row = Sequence[Any]
# "No due time to check": later than any job's schedule.
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


class Driver(Protocol):
    """One database's side of the repositories. `one`, `all` and `changes` raise
    `StoreUnavailable` when the database does not answer."""

    @property
    def unique_violation(self) -> type[Exception]:
        """The error a unique index raises on a duplicate."""

    def statement(self, text: str) -> str:
        """`text` (PostgreSQL's spelling) as this database wants it."""

    def ts(self, value: datetime | None) -> Any:
        """A datetime as this database stores it (UTC, milliseconds)."""

    def dt(self, value: Any) -> datetime | None:
        """A stored datetime back as an aware UTC datetime."""

    @property
    def no_limit(self) -> Any:
        """The LIMIT parameter that means "no limit" (NULL, or -1 for SQLite)."""

    async def one(self, sql: str, args: Sequence[Any]) -> Row | None: ...

    async def all(self, sql: str, args: Sequence[Any]) -> list[Row]: ...

    async def changes(self, sql: str, args: Sequence[Any]) -> int:
        """Run a command; the number of rows it affected."""


def like_escape(text: str) -> str:
    """`text` matched literally by LIKE … ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# Column lists in the records' field order, so a row builds its record positionally.
_USER_FIELDS = [f.name for f in fields(User)]
_JOB_FIELDS = [f.name for f in fields(Job)]
_CONTENT_FIELDS = [f.name for f in fields(Content)]
USER_COLS = ", ".join(_USER_FIELDS)
JOB_COLS = ", ".join(_JOB_FIELDS)
CONTENT_COLS = ", ".join(_CONTENT_FIELDS)
_TIMES = ("_at", "_for", "_until")
_USER_TIMES = [i for i, name in enumerate(_USER_FIELDS) if name.endswith(_TIMES)]
_JOB_TIMES = [i for i, name in enumerate(_JOB_FIELDS) if name.endswith(_TIMES)]
_CONTENT_TIMES = [i for i, name in enumerate(_CONTENT_FIELDS) if name.endswith(_TIMES)]
_CONTENT_TAGS = _CONTENT_FIELDS.index("tags")
_STATUS = _JOB_FIELDS.index("status")
_JSON = [_JOB_FIELDS.index("usage"), _JOB_FIELDS.index("history"), _JOB_FIELDS.index("options")]
_COST = _JOB_FIELDS.index("cost")
_ATTEMPTS = _JOB_FIELDS.index("attempts")
_HELD = _JOB_FIELDS.index("batch_held")
UNFINISHED = "(" + ", ".join(f"'{status.value}'" for status in UNFINISHED_STATUSES) + ")"
RETRYABLE_STATUSES = "(" + ", ".join(f"'{status.value}'" for status in RETRYABLE) + ")"
JOB_CREATE_COLUMNS = (
    "job_id, user_id, status, prompt, content_type, scheduled_for, created_at, updated_at, "
    "attempts, options, parent_job_id"
)
# GET /usage's groups: the day (UTC) a job was created, its content type, its model. The
# day's expression is the dialect's (`DAY_EXPRESSIONS`), put in by the store.
DAY_MARK = "__DAY__"
DAY_EXPRESSIONS: dict[Dialect, str] = {
    "postgresql": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "sqlite": "substr(created_at, 1, 10)",
}
USAGE_KEYS = {"day": DAY_MARK, "contentType": "content_type", "model": "model"}
_BY_STATUS = ", ".join(f"sum(CASE WHEN status = '{s.value}' THEN 1 ELSE 0 END)" for s in JobStatus)


def _usage_statement(key: str) -> str:
    return (
        f"SELECT {key} AS k, count(*), {_BY_STATUS}, "
        "COALESCE(sum(prompt_tokens), 0), COALESCE(sum(completion_tokens), 0), "
        "COALESCE(sum(total_tokens), 0), COALESCE(sum(cost), 0), count(cost), "
        "sum(CASE WHEN feedback_rating = 'like' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN feedback_rating = 'dislike' THEN 1 ELSE 0 END) "
        "FROM jobs WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 "
        "GROUP BY k ORDER BY k"
    )


STATEMENTS = {
    "user_insert": (
        "INSERT INTO users (user_id, email, password_hash, created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $4)"
    ),
    "user_by_id": f"SELECT {USER_COLS} FROM users WHERE user_id = $1",
    "user_by_email": f"SELECT {USER_COLS} FROM users WHERE email = $1",
    "user_set_password": "UPDATE users SET password_hash = $2, updated_at = $3 WHERE user_id = $1",
    "user_delete": "DELETE FROM users WHERE user_id = $1",
    "job_insert": (
        f"INSERT INTO jobs ({JOB_CREATE_COLUMNS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11)"
    ),
    # The cap and the insert in one statement: nothing is inserted when the user already
    # has `cap` unfinished jobs (uses ix_jobs_user_status). The casts type the parameters
    # of a FROM-less SELECT for PostgreSQL.
    "job_insert_under_cap": (
        f"INSERT INTO jobs ({JOB_CREATE_COLUMNS}) "
        "SELECT $1::varchar, $2::varchar, $3::varchar, $4::text, $5::varchar, "
        "$6::timestamptz, $7::timestamptz, $8::timestamptz, $9::integer, $10::jsonb, "
        "$11::varchar "
        f"WHERE (SELECT count(*) FROM jobs WHERE user_id = $2 AND status IN {UNFINISHED} "
        "AND batch_held = 0) < $12::integer"
    ),
    "job_by_id": f"SELECT {JOB_COLS} FROM jobs WHERE job_id = $1",
    "job_by_id_for_user": f"SELECT {JOB_COLS} FROM jobs WHERE job_id = $1 AND user_id = $2",
    "jobs_for_user": (
        f"SELECT {JOB_COLS} FROM jobs WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
    ),
    "jobs_for_user_in_status": (
        f"SELECT {JOB_COLS} FROM jobs WHERE user_id = $1 AND status = $3 "
        "ORDER BY created_at DESC, id DESC LIMIT $2"
    ),
    "jobs_changed_since": (
        f"SELECT {JOB_COLS} FROM jobs WHERE user_id = $1 AND updated_at > $2 "
        "ORDER BY updated_at ASC, id ASC LIMIT $3"
    ),
    "jobs_unfinished_count": (
        f"SELECT count(*) FROM jobs WHERE user_id = $1 AND status IN {UNFINISHED} "
        "AND batch_held = 0"
    ),
    "jobs_unfinished_due": (
        f"SELECT {JOB_COLS} FROM jobs WHERE status IN {UNFINISHED} AND scheduled_for < $1 "
        "AND batch_held = 0 ORDER BY scheduled_for ASC, id ASC LIMIT $2"
    ),
    "jobs_past_lease": (
        f"SELECT {JOB_COLS} FROM jobs WHERE status = 'processing' "
        "AND (lease_until IS NULL OR lease_until < $1) ORDER BY started_at ASC, id ASC LIMIT $2"
    ),
    # `queued` → `processing`, or take over a `processing` job whose lease ran out, has
    # none, or is held by the same owner ($5; NULL matches no owner); never a job that
    # is not due by $6 (it was rescheduled later).
    "job_take": (
        "UPDATE jobs SET status = 'processing', started_at = $2, updated_at = $2, "
        "attempts = $3, lease_until = $4, lease_owner = $5 "
        "WHERE job_id = $1 AND (status = 'queued' OR (status = 'processing' AND "
        "(lease_until IS NULL OR lease_until <= $2 OR lease_owner = $5))) "
        "AND scheduled_for <= $6 "
        f"RETURNING {JOB_COLS}"
    ),
    "job_cancel": (
        "UPDATE jobs SET status = 'cancelled', cancelled_at = $3, updated_at = $3, "
        "lease_until = NULL, lease_owner = NULL "
        f"WHERE job_id = $1 AND user_id = $2 AND status IN {UNFINISHED} RETURNING {JOB_COLS}"
    ),
    "job_reschedule": (
        "UPDATE jobs SET scheduled_for = $3, updated_at = $4, "
        "prompt = COALESCE($5::text, prompt), content_type = COALESCE($6::varchar, content_type), "
        "batch_held = CASE WHEN $7::integer = 1 THEN 0 ELSE batch_held END "
        f"WHERE job_id = $1 AND user_id = $2 AND status = 'queued' RETURNING {JOB_COLS}"
    ),
    "job_requeue": (
        "UPDATE jobs SET status = 'queued', scheduled_for = $3, updated_at = $4, "
        "history = $5::jsonb, error = NULL, failed_at = NULL, cancelled_at = NULL, "
        "started_at = NULL, completed_at = NULL, generated_content = NULL, model = NULL, "
        "usage = NULL, lease_until = NULL, lease_owner = NULL, finish_reason = NULL, cost = NULL, "
        "prompt_tokens = NULL, completion_tokens = NULL, total_tokens = NULL, "
        "batch_held = $6::integer "
        f"WHERE job_id = $1 AND user_id = $2 AND status IN {RETRYABLE_STATUSES} "
        f"RETURNING {JOB_COLS}"
    ),
    # Put back a snapshot of a job that is still `queued` (a change the queue refused).
    "job_restore": (
        "UPDATE jobs SET status = $2, scheduled_for = $3, updated_at = $4, prompt = $5, "
        "content_type = $6, history = $7::jsonb, error = $8, failed_at = $9, "
        "cancelled_at = $10, started_at = $11, completed_at = $12, "
        "generated_content = $13, model = $14, usage = $15::jsonb "
        "WHERE job_id = $1 AND status = 'queued'"
    ),
    "job_complete": (
        "UPDATE jobs SET status = 'completed', generated_content = $2, model = $3, "
        "usage = $4::jsonb, completed_at = $5, updated_at = $5, error = NULL, "
        "finish_reason = $6, cost = $7::float8, prompt_tokens = $8::integer, "
        "completion_tokens = $9::integer, total_tokens = $10::integer "
        "WHERE job_id = $1 AND status = 'processing'"
    ),
    "job_variation_ids": (
        "SELECT job_id FROM jobs WHERE parent_job_id = $1 AND user_id = $2 "
        "ORDER BY created_at ASC, id ASC LIMIT $3"
    ),
    "usage_day": _usage_statement(DAY_MARK),
    "usage_contentType": _usage_statement("content_type"),
    "usage_model": _usage_statement("model"),
    # The owner's rating of a completed job; the job's `updated_at` (its state) stays.
    "job_feedback_set": (
        "UPDATE jobs SET feedback_rating = $3, feedback_comment = $4, feedback_at = $5 "
        f"WHERE job_id = $1 AND user_id = $2 AND status = 'completed' RETURNING {JOB_COLS}"
    ),
    "job_feedback_clear": (
        "UPDATE jobs SET feedback_rating = NULL, feedback_comment = NULL, feedback_at = NULL "
        "WHERE job_id = $1 AND user_id = $2 AND feedback_rating IS NOT NULL"
    ),
    "job_fail": (
        "UPDATE jobs SET status = 'failed', error = $2, failed_at = $3, updated_at = $3 "
        f"WHERE job_id = $1 AND status IN {UNFINISHED}"
    ),
    "job_delete": "DELETE FROM jobs WHERE job_id = $1",
    "job_release": (
        "UPDATE jobs SET lease_until = NULL "
        "WHERE job_id = $1 AND status = 'processing' AND lease_owner = $2"
    ),
    # Leases held on one worker: owners `<message>@<worker>` ($1 is `%@<worker>`, escaped).
    "jobs_release_of_worker": (
        "UPDATE jobs SET lease_until = NULL WHERE job_id IN (SELECT job_id FROM jobs "
        "WHERE status = 'processing' AND lease_owner LIKE $1 ESCAPE '\\' LIMIT $2) "
        f"RETURNING {JOB_COLS}"
    ),
    # Oldest first, page by page, along ix_jobs_user_created / ix_contents_user_created:
    # the page after the row of the id given.
    "jobs_first_page_for_user": (
        f"SELECT {JOB_COLS} FROM jobs WHERE user_id = $1 ORDER BY created_at, id LIMIT $2"
    ),
    "jobs_page_for_user": (
        f"SELECT {JOB_COLS} FROM jobs WHERE user_id = $1 AND (created_at, id) > "
        "(SELECT created_at, id FROM jobs WHERE job_id = $2) ORDER BY created_at, id LIMIT $3"
    ),
    "jobs_delete_for_user": "DELETE FROM jobs WHERE user_id = $1",
}


class _Repository:
    def __init__(self, driver: Driver, statements: dict[str, str]) -> None:
        self._db = driver
        self._sql = statements

    def _limit(self, n: int) -> Any:
        # As with a MongoDB cursor: 0 means no limit; a negative limit counts like a
        # positive one.
        return abs(n) or self._db.no_limit

    def _times(self, row: Row, indices: list[int]) -> list[Any]:
        values = list(row)
        for i in indices:
            values[i] = self._db.dt(values[i])
        return values

    def _user(self, row: Row | None) -> User | None:
        return None if row is None else User(*self._times(row, _USER_TIMES))

    def _job(self, row: Row) -> Job:
        values = self._times(row, _JOB_TIMES)
        values[_STATUS] = JobStatus(values[_STATUS])
        for i in _JSON:
            if values[i] is not None and not isinstance(values[i], list | dict):
                values[i] = json.loads(values[i])
        values[_ATTEMPTS] = int(values[_ATTEMPTS] or 0)
        if values[_COST] is not None:
            values[_COST] = float(values[_COST])
        values[_HELD] = bool(values[_HELD])
        return Job(*values)

    def _content(self, row: Row) -> Content:
        values = self._times(row, _CONTENT_TIMES)
        if not isinstance(values[_CONTENT_TAGS], list):  # JSON text (SQLite, asyncpg)
            values[_CONTENT_TAGS] = json.loads(values[_CONTENT_TAGS])
        return Content(*values)


class Users(_Repository):
    async def create(self, user: User) -> None:
        args = (user.user_id, user.email, user.password_hash, self._db.ts(user.created_at))
        try:
            await self._db.changes(self._sql["user_insert"], args)
        except self._db.unique_violation:
            raise Conflict(
                "An account with this email already exists", code="email_taken"
            ) from None

    async def get(self, user_id: str) -> User | None:
        return self._user(await self._db.one(self._sql["user_by_id"], (user_id,)))

    async def get_by_email(self, email: str) -> User | None:
        return self._user(await self._db.one(self._sql["user_by_email"], (email,)))

    async def set_password(self, user_id: str, password_hash: str) -> bool:
        args = (user_id, password_hash, self._db.ts(utcnow()))
        return await self._db.changes(self._sql["user_set_password"], args) == 1

    async def delete(self, user_id: str) -> bool:
        return await self._db.changes(self._sql["user_delete"], (user_id,)) == 1


class Jobs(_Repository):
    async def create(self, job: Job, *, max_unfinished: int = 0) -> bool:
        return await self._insert(self.create_row(job), max_unfinished)

    def create_row(self, job: Job) -> tuple[Any, ...]:
        """A new job's values for `JOB_CREATE_COLUMNS`, as the driver writes them: the same
        fields as the other stores write at creation; the rest come with the transitions."""
        ts = self._db.ts
        return (
            job.job_id,
            job.user_id,
            job.status.value,
            job.prompt,
            job.content_type,
            ts(job.scheduled_for),
            ts(job.created_at),
            ts(job.updated_at),
            job.attempts,
            None if job.options is None else json.dumps(job.options),
            job.parent_job_id,
        )

    async def _insert(self, values: tuple[Any, ...], cap: int) -> bool:
        """One job's row (`JOB_CREATE_COLUMNS`, as the driver writes them), unless `cap > 0`
        and its user already has `cap` unfinished jobs."""
        if cap <= 0:
            return await self._db.changes(self._sql["job_insert"], values) == 1
        sql = self._sql["job_insert_under_cap"]
        return await self._db.changes(sql, (*values, cap)) == 1

    async def get(self, job_id: str) -> Job | None:
        row = await self._db.one(self._sql["job_by_id"], (job_id,))
        return self._job(row) if row else None

    async def get_for_user(self, job_id: str, user_id: str) -> Job | None:
        row = await self._db.one(self._sql["job_by_id_for_user"], (job_id, user_id))
        return self._job(row) if row else None

    async def list_for_user(
        self, user_id: str, *, limit: int, status: JobStatus | None = None
    ) -> list[Job]:
        if status is None:
            args: tuple[Any, ...] = (user_id, self._limit(limit))
            rows = await self._db.all(self._sql["jobs_for_user"], args)
        else:
            args = (user_id, self._limit(limit), status.value)
            rows = await self._db.all(self._sql["jobs_for_user_in_status"], args)
        return [self._job(r) for r in rows]

    async def list_changed_since(self, user_id: str, since: datetime, *, limit: int) -> list[Job]:
        args = (user_id, self._db.ts(since), self._limit(limit))
        return [self._job(r) for r in await self._db.all(self._sql["jobs_changed_since"], args)]

    async def count_unfinished(self, user_id: str) -> int:
        row = await self._db.one(self._sql["jobs_unfinished_count"], (user_id,))
        return int(row[0]) if row is not None else 0

    async def list_unfinished_due(self, due_before: datetime, *, limit: int) -> list[Job]:
        args = (self._db.ts(due_before), self._limit(limit))
        return [self._job(r) for r in await self._db.all(self._sql["jobs_unfinished_due"], args)]

    async def list_past_lease(self, at: datetime, *, limit: int) -> list[Job]:
        args = (self._db.ts(at), self._limit(limit))
        return [self._job(r) for r in await self._db.all(self._sql["jobs_past_lease"], args)]

    async def mark_processing(
        self,
        job_id: str,
        *,
        at: datetime,
        attempt: int,
        lease_until: datetime | None = None,
        owner: str | None = None,
        due_by: datetime | None = None,
        expected: Job | None = None,  # one statement takes and answers here: not needed
    ) -> Job | None:
        ts = self._db.ts
        args = (job_id, ts(at), attempt, ts(lease_until), owner, ts(due_by or FAR_FUTURE))
        row = await self._take(args)
        return self._job(row) if row else None

    async def cancel(self, job_id: str, user_id: str, *, at: datetime) -> Job | None:
        row = await self._db.one(self._sql["job_cancel"], (job_id, user_id, self._db.ts(at)))
        return self._job(row) if row else None

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
        ts = self._db.ts
        args = (job_id, user_id, ts(scheduled_for), ts(at), prompt, content_type, int(release))
        row = await self._db.one(self._sql["job_reschedule"], args)
        return self._job(row) if row else None

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
        ts = self._db.ts
        args = (job_id, user_id, ts(scheduled_for), ts(at), json.dumps(history), int(held))
        row = await self._db.one(self._sql["job_requeue"], args)
        return self._job(row) if row else None

    async def restore(self, job: Job) -> bool:
        ts = self._db.ts
        args = (
            job.job_id,
            job.status.value,
            ts(job.scheduled_for),
            ts(job.updated_at),
            job.prompt,
            job.content_type,
            None if job.history is None else json.dumps(job.history),
            job.error,
            ts(job.failed_at),
            ts(job.cancelled_at),
            ts(job.started_at),
            ts(job.completed_at),
            job.generated_content,
            job.model,
            None if job.usage is None else json.dumps(job.usage),
        )
        return await self._db.changes(self._sql["job_restore"], args) == 1

    async def _take(self, args: tuple[Any, ...]) -> Row | None:
        """`job_take` with these arguments: the taken row, or None."""
        return await self._db.one(self._sql["job_take"], args)

    async def mark_completed(self, job_id: str, *, result: Completion, at: datetime) -> bool:
        usage = None if result.usage is None else json.dumps(result.usage)
        prompt, completion, total, cost = usage_numbers(result.usage)
        args = (
            job_id, result.content, result.model, usage, self._db.ts(at),
            result.finish_reason, cost, prompt, completion, total,
        )  # fmt: skip
        return await self._complete(args)

    async def variation_ids(self, job_id: str, user_id: str, *, limit: int) -> list[str]:
        args = (job_id, user_id, self._limit(limit))
        return [str(r[0]) for r in await self._db.all(self._sql["job_variation_ids"], args)]

    async def usage(
        self, user_id: str, *, start: datetime, end: datetime, group_by: str
    ) -> list[UsageRow]:
        args = (user_id, self._db.ts(start), self._db.ts(end))
        rows = await self._db.all(self._sql[f"usage_{group_by}"], args)
        statuses = [s.value for s in JobStatus]
        out = []
        for row in rows:
            n = len(statuses)
            counts = [int(v or 0) for v in row[2 : 2 + n]]
            rest = row[2 + n :]
            out.append(
                UsageRow(
                    key=None if row[0] is None else str(row[0]),
                    jobs=int(row[1]),
                    by_status=dict(zip(statuses, counts, strict=True)),
                    prompt_tokens=int(rest[0]),
                    completion_tokens=int(rest[1]),
                    total_tokens=int(rest[2]),
                    cost=float(rest[3]),
                    priced_jobs=int(rest[4]),
                    liked=int(rest[5] or 0),
                    disliked=int(rest[6] or 0),
                )
            )
        return sorted(out, key=lambda r: (r.key is None, r.key or ""))

    async def set_feedback(
        self, job_id: str, user_id: str, *, rating: str, comment: str | None, at: datetime
    ) -> Job | None:
        args = (job_id, user_id, rating, comment, self._db.ts(at))
        row = await self._db.one(self._sql["job_feedback_set"], args)
        return self._job(row) if row else None

    async def clear_feedback(self, job_id: str, user_id: str) -> bool:
        return await self._db.changes(self._sql["job_feedback_clear"], (job_id, user_id)) == 1

    async def _complete(self, args: tuple[Any, ...]) -> bool:
        """`job_complete` with these arguments: whether it wrote."""
        return await self._db.changes(self._sql["job_complete"], args) == 1

    async def mark_failed(self, job_id: str, *, error: str, at: datetime) -> bool:
        args = (job_id, error, self._db.ts(at))
        return await self._db.changes(self._sql["job_fail"], args) == 1

    async def delete(self, job_id: str) -> None:
        await self._db.changes(self._sql["job_delete"], (job_id,))

    async def release_lease(self, job_id: str, *, owner: str) -> bool:
        return await self._db.changes(self._sql["job_release"], (job_id, owner)) == 1

    async def release_leases_of(self, worker: str, *, limit: int) -> list[Job]:
        args = ("%@" + like_escape(worker), self._limit(limit))
        return [self._job(r) for r in await self._db.all(self._sql["jobs_release_of_worker"], args)]

    async def page_for_user(self, user_id: str, *, after: str | None, limit: int) -> list[Job]:
        args: tuple[Any, ...] = (user_id, self._limit(limit))
        sql = self._sql["jobs_first_page_for_user"]
        if after is not None:
            sql, args = self._sql["jobs_page_for_user"], (user_id, after, self._limit(limit))
        return [self._job(r) for r in await self._db.all(sql, args)]

    async def delete_for_user(self, user_id: str) -> int:
        return await self._db.changes(self._sql["jobs_delete_for_user"], (user_id,))


class CoalescedJobs(Jobs):
    """Jobs whose concurrent calls share round trips (`batching.Coalescer`): the API's
    creates, and the worker's takes and completions. One flush of each kind is out at a
    time, and the calls that arrive meanwhile go together in the next (up to `BATCH`). A
    batch of one runs the single-row statement; a store supplies the `_…_many` methods
    for the rest, each call's outcome as if the calls had run one by one in arrival order
    (a create's cap counts the rows before it; a job's second call in a batch sees its
    first one's write)."""

    BATCH = 64

    def __init__(self, driver: Driver, statements: dict[str, str]) -> None:
        super().__init__(driver, statements)
        self.inserts: Coalescer[tuple[tuple[Any, ...], int], bool] = Coalescer(
            self._insert_batch, max_batch=self.BATCH
        )
        # Spaced as the worker's per-job round trips are (`batching.WORKER_SPACING`).
        self.takes: Coalescer[tuple[Any, ...], Row | None] = Coalescer(
            self._take_batch, max_batch=self.BATCH, spacing=WORKER_SPACING
        )
        self.completions: Coalescer[tuple[Any, ...], bool] = Coalescer(
            self._complete_batch, max_batch=self.BATCH, spacing=WORKER_SPACING
        )

    async def _insert(self, values: tuple[Any, ...], cap: int) -> bool:
        return await self.inserts.submit((values, cap))

    async def _insert_batch(
        self, rows: list[tuple[tuple[Any, ...], int]]
    ) -> Sequence[bool | Exception]:
        if len(rows) == 1:
            return [await super()._insert(*rows[0])]
        return await self._insert_many(rows)

    async def _insert_many(
        self, rows: list[tuple[tuple[Any, ...], int]]
    ) -> Sequence[bool | Exception]:
        """Several (row values, cap) in one round trip: each inserted or not, or the error
        that refused it alone."""
        raise NotImplementedError

    async def _take(self, args: tuple[Any, ...]) -> Row | None:
        return await self.takes.submit(args)

    async def _take_batch(self, calls: list[tuple[Any, ...]]) -> Sequence[Row | Exception | None]:
        if len(calls) == 1:
            return [await super()._take(calls[0])]
        return await self._take_many(calls)

    async def _take_many(self, calls: list[tuple[Any, ...]]) -> Sequence[Row | Exception | None]:
        """Several `job_take` calls in one round trip: each one's taken row or None, or
        the error that refused it alone."""
        raise NotImplementedError

    async def _complete(self, args: tuple[Any, ...]) -> bool:
        return await self.completions.submit(args)

    async def _complete_batch(self, calls: list[tuple[Any, ...]]) -> Sequence[bool | Exception]:
        if len(calls) == 1:
            return [await super()._complete(calls[0])]
        return await self._complete_many(calls)

    async def _complete_many(self, calls: list[tuple[Any, ...]]) -> Sequence[bool | Exception]:
        """Several `job_complete` calls in one round trip: whether each wrote, or the
        error that refused it alone."""
        raise NotImplementedError


class SqlStore:
    """What the two SQL stores share: their URL, the repositories over their driver, and
    `init()`, which brings the schema up to date (`schema.migration`) through the store's
    own `_migrate`. Each store adds its connections, `ping()` and `close()`."""

    name: str
    dialect: Dialect
    jobs_repository: type[Jobs] = Jobs

    def __init__(self, url: SqlUrl | str) -> None:
        if isinstance(url, str):
            url = parse_database_url(url)
        if url.backend != self.dialect:
            raise ValueError(f"{type(self).__name__} needs a {self.dialect} URL, not {url.backend}")
        self.url = url
        self.description = url.description

    def _serve(self, driver: Driver) -> None:
        from smartgen.store.sql.batches import BATCH_STATEMENTS, Batches
        from smartgen.store.sql.contents import CONTENT_STATEMENTS, Contents
        from smartgen.store.sql.keys import KEY_STATEMENTS, ApiKeys
        from smartgen.store.sql.voices import VOICE_STATEMENTS, Voices
        from smartgen.store.sql.webhooks import WEBHOOK_STATEMENTS, Webhooks

        day = DAY_EXPRESSIONS[self.dialect]
        statements = {
            name: driver.statement(text.replace(DAY_MARK, day))
            for name, text in {
                **STATEMENTS,
                **VOICE_STATEMENTS,
                **CONTENT_STATEMENTS,
                **KEY_STATEMENTS,
                **WEBHOOK_STATEMENTS,
                **BATCH_STATEMENTS,
            }.items()
        }
        self.batches: BatchRepository = Batches(driver, statements)
        self.users: UserRepository = Users(driver, statements)
        self.voices: VoiceRepository = Voices(driver, statements)
        self.api_keys: ApiKeyRepository = ApiKeys(driver, statements)
        self.webhooks: WebhookRepository = Webhooks(driver, statements)
        self.jobs: JobRepository = self.jobs_repository(driver, statements)
        self.contents: ContentRepository = Contents(driver, statements, self.dialect)
