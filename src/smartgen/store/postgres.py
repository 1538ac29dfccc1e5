"""PostgreSQL store on asyncpg directly: the production SQL store.

The same records, statements and semantics as the SQLAlchemy store in `sql.py` (which also
owns the schema: `init()` runs its migration), without SQLAlchemy on the request path. Under
load, SQLAlchemy's per-statement work (compiling parameters, execution contexts, result
processing, the greenlet bridge to asyncpg) cost more CPU than the round trip it wrapped:
about a quarter of the API's CPU per queued job and a sixth of the worker's (see the README's
performance section). Here each call is a pool checkout and one prepared statement (asyncpg
prepares and caches it per connection).

Every statement autocommits, so a call costs one round trip and never leaves a transaction
open. Datetimes go in as aware UTC truncated to milliseconds (as MongoDB keeps them) and come
back as aware UTC; `usage` is JSONB, sent and read as JSON text.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from smartgen.config import ConfigError
from smartgen.errors import Conflict, StoreUnavailable
from smartgen.store.base import (
    Completion,
    Content,
    ContentRepository,
    Job,
    JobRepository,
    JobStatus,
    User,
    UserRepository,
)
from smartgen.store.unavailable import translate_unavailable
from smartgen.times import as_utc

_UNAVAILABLE_MESSAGE = "The database is unavailable; try again shortly"

# Column lists in the records' field order, so a row builds its record positionally.
_USER_COLS = "user_id, email, password_hash, created_at"
_JOB_FIELDS = [f.name for f in fields(Job)]
_JOB_COLS = ", ".join(_JOB_FIELDS)
_CONTENT_FIELDS = [f.name for f in fields(Content)]
_CONTENT_COLS = ", ".join(_CONTENT_FIELDS)
_STATUS = _JOB_FIELDS.index("status")
_USAGE = _JOB_FIELDS.index("usage")
_UNFINISHED = "('queued', 'processing')"


# --- errors -----------------------------------------------------------------------------
class _NoConnection(Exception):
    """Raised (chained to the cause) when no connection could be had: the pool was closed,
    connecting failed or was refused by the server, or the checkout timed out."""


# SQLSTATE classes meaning "the server did not serve this": 08 connection exception,
# 53 insufficient resources (too many connections), 57 operator intervention (shutdown,
# cannot connect now), 3D invalid catalog (the database is gone), 28 authorisation.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57", "3D", "28")


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(
        error,
        _NoConnection
        | OSError
        | TimeoutError
        | asyncpg.InterfaceError
        # The client's protocol state broke (e.g. a reply to a cancelled call): the
        # connection is closed on release, and a retry gets a fresh one.
        | asyncpg.exceptions.InternalClientError,
    ):
        # InterfaceError covers a connection closed under us (ConnectionDoesNotExistError
        # is an InterfaceError subclass in some versions, a PostgresError in others).
        return True
    if isinstance(error, asyncpg.PostgresError):
        sqlstate = getattr(error, "sqlstate", None) or ""
        return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES or isinstance(
            error, asyncpg.exceptions.ConnectionDoesNotExistError
        )
    return False


_unavailable = translate_unavailable(_is_unavailable, _UNAVAILABLE_MESSAGE)


def _reason(error: BaseException) -> str:
    """One line naming the driver's error, e.g. `InvalidCatalogNameError: database …`."""
    cause = error.__cause__ if isinstance(error, _NoConnection) and error.__cause__ else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


# --- values -----------------------------------------------------------------------------
def _ts(value: datetime | None) -> datetime | None:
    """Aware UTC, truncated to milliseconds."""
    if value is None:
        return None
    value = as_utc(value)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _limit(n: int) -> int | None:
    # As with a MongoDB cursor: 0 means no limit (LIMIT NULL); a negative limit counts
    # like a positive one.
    return abs(n) or None


def _affected(status: str) -> int:
    """The row count of a command tag: `UPDATE 1`, `INSERT 0 1`, `DELETE 0`."""
    return int(status.rsplit(" ", 1)[-1])


def _user(row: Sequence[Any] | None) -> User | None:
    return None if row is None else User(*row)


def _job(row: Sequence[Any]) -> Job:
    values = list(row)
    values[_STATUS] = JobStatus(values[_STATUS])
    if values[_USAGE] is not None:
        values[_USAGE] = json.loads(values[_USAGE])
    return Job(*values)


def _content(row: Sequence[Any]) -> Content:
    return Content(*row)


# --- connections ------------------------------------------------------------------------
IDLE_LIFETIME_SECONDS = 300.0  # an idle connection older than this is closed


class _Pool:
    """Up to `size` connections, opened on demand (a store is built before anything
    connects) and handed out first come, first served.

    Not asyncpg's `Pool`: that one gives a released connection to whoever asks next, so a
    waiter that loses the race goes back to the end of the line (with 64 requests in flight
    on 15 connections, some `GET`s waited 5-10 times the median), and its per-checkout
    bookkeeping (a proxy object, an inactivity timer, a reset hook) cost about 16 µs per
    statement, more than a third of the statement's own client-side CPU. Here a FIFO
    semaphore orders the callers and idle connections sit on a stack (the most recently
    used first, so a burst's extra connections age out at the bottom)."""

    def __init__(self, dsn: str, *, size: int, timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._turns = asyncio.Semaphore(size)
        self._idle: list[tuple[asyncpg.Connection, float]] = []  # (connection, idle since)
        self._closed = False

    async def _open(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._dsn,
            timeout=self._timeout,
            command_timeout=30,
            server_settings={"application_name": "smartgen"},
        )

    async def acquire(self) -> asyncpg.Connection:
        """A connection; `_NoConnection` when none could be had within `timeout`."""
        try:
            # asyncio.timeout, not wait_for: no task per checkout.
            async with asyncio.timeout(self._timeout):
                await self._turns.acquire()
                try:
                    conn = await self._take()
                except BaseException:
                    self._turns.release()
                    raise
        except _NoConnection:
            raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise _NoConnection(f"no database connection: {error}") from error
        return conn

    async def _take(self) -> asyncpg.Connection:
        if self._closed:
            raise _NoConnection("the store is closed")
        while self._idle:
            conn, _ = self._idle.pop()
            if not conn.is_closed():  # the server may have dropped it while idle
                return conn
        return await self._open()

    def release(self, conn: asyncpg.Connection, *, reusable: bool) -> None:
        """Give a connection back; one that met anything but a statement error (a lost
        connection, a timeout, a cancelled call with a reply still in flight) is closed."""
        try:
            if reusable and not self._closed and not conn.is_closed():
                now = time.monotonic()
                self._idle.append((conn, now))
                while self._idle and now - self._idle[0][1] > IDLE_LIFETIME_SECONDS:
                    old, _ = self._idle.pop(0)
                    old.terminate()
            else:
                conn.terminate()
        finally:
            self._turns.release()

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return list(await conn.fetch(sql, *args))

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a command; the number of rows it affected."""
        async with self.connection() as conn:
            return _affected(await conn.execute(sql, *args))

    def connection(self) -> _Checkout:
        return _Checkout(self)

    async def close(self) -> None:
        """Close idle connections now; busy ones are closed when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()


class _Checkout:
    """`async with`: one connection from the pool; failing to get one is `_NoConnection`."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._pool.acquire()
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if self._conn is not None:
            # A statement error (constraint, syntax, …) leaves the connection idle and
            # usable: every statement autocommits. The server shutting the session down
            # (also a PostgresError) does not.
            reusable = exc is None or (
                isinstance(exc, asyncpg.PostgresError) and not _is_unavailable(exc)
            )
            self._pool.release(self._conn, reusable=reusable)
            self._conn = None


def asyncpg_dsn(url: URL) -> str:
    """A libpq-style DSN for asyncpg from a normalised (`sql_url`) URL: the driver suffix
    dropped and `ssl` (SQLAlchemy's asyncpg spelling) back to `sslmode`."""
    query = dict(url.query)
    if "ssl" in query:
        query["sslmode"] = query.pop("ssl")
    plain = url.set(drivername="postgresql", query=query)
    return plain.render_as_string(hide_password=False)


# --- repositories -----------------------------------------------------------------------
class PgUsers:
    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    @_unavailable
    async def create(self, user: User) -> None:
        try:
            await self._pool.execute(
                "INSERT INTO users (user_id, email, password_hash, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $4)",
                user.user_id,
                user.email,
                user.password_hash,
                _ts(user.created_at),
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(
                "An account with this email already exists", code="email_taken"
            ) from None

    @_unavailable
    async def get(self, user_id: str) -> User | None:
        return _user(
            await self._pool.fetchrow(f"SELECT {_USER_COLS} FROM users WHERE user_id = $1", user_id)
        )

    @_unavailable
    async def get_by_email(self, email: str) -> User | None:
        return _user(
            await self._pool.fetchrow(f"SELECT {_USER_COLS} FROM users WHERE email = $1", email)
        )


_CREATE_COLS = (
    "job_id, user_id, status, prompt, content_type, scheduled_for, created_at, updated_at, attempts"
)
_INSERT_JOB = f"INSERT INTO jobs ({_CREATE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
# The cap and the insert in one statement: insert nothing when the user already has `cap`
# unfinished jobs (uses ix_jobs_user_status).
_INSERT_JOB_UNDER_CAP = (
    f"INSERT INTO jobs ({_CREATE_COLS}) "
    "SELECT $1::varchar, $2::varchar, $3::varchar, $4::text, $5::varchar, $6::timestamptz, "
    "$7::timestamptz, $8::timestamptz, $9::integer "
    f"WHERE (SELECT count(*) FROM jobs WHERE user_id = $2 AND status IN {_UNFINISHED}) "
    "< $10::integer"
)
# `queued` → `processing`, or take over a `processing` job whose lease ran out, has none, or
# is held by the same owner ($5; NULL matches no owner).
_TAKE_JOB = (
    "UPDATE jobs SET status = 'processing', started_at = $2, updated_at = $2, attempts = $3, "
    "lease_until = $4, lease_owner = $5 "
    "WHERE job_id = $1 AND (status = 'queued' OR (status = 'processing' AND "
    "(lease_until IS NULL OR lease_until <= $2 OR lease_owner = $5))) "
    f"RETURNING {_JOB_COLS}"
)
_COMPLETE_JOB = (
    "UPDATE jobs SET status = 'completed', generated_content = $2, model = $3, "
    "usage = $4::jsonb, completed_at = $5, updated_at = $5, error = NULL "
    "WHERE job_id = $1 AND status = 'processing'"
)
_FAIL_JOB = (
    "UPDATE jobs SET status = 'failed', error = $2, failed_at = $3, updated_at = $3 "
    f"WHERE job_id = $1 AND status IN {_UNFINISHED}"
)


class PgJobs:
    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    @_unavailable
    async def create(self, job: Job, *, max_unfinished: int = 0) -> bool:
        # The same fields as the other stores write at creation; the rest come with the
        # transitions.
        values = (
            job.job_id,
            job.user_id,
            job.status.value,
            job.prompt,
            job.content_type,
            _ts(job.scheduled_for),
            _ts(job.created_at),
            _ts(job.updated_at),
            job.attempts,
        )
        if max_unfinished <= 0:
            return await self._pool.execute(_INSERT_JOB, *values) == 1
        return await self._pool.execute(_INSERT_JOB_UNDER_CAP, *values, max_unfinished) == 1

    @_unavailable
    async def get(self, job_id: str) -> Job | None:
        row = await self._pool.fetchrow(f"SELECT {_JOB_COLS} FROM jobs WHERE job_id = $1", job_id)
        return _job(row) if row else None

    @_unavailable
    async def get_for_user(self, job_id: str, user_id: str) -> Job | None:
        row = await self._pool.fetchrow(
            f"SELECT {_JOB_COLS} FROM jobs WHERE job_id = $1 AND user_id = $2", job_id, user_id
        )
        return _job(row) if row else None

    @_unavailable
    async def list_for_user(
        self, user_id: str, *, limit: int, status: JobStatus | None = None
    ) -> list[Job]:
        if status is None:
            rows = await self._pool.fetch(
                f"SELECT {_JOB_COLS} FROM jobs WHERE user_id = $1 "
                "ORDER BY created_at DESC, id DESC LIMIT $2",
                user_id,
                _limit(limit),
            )
        else:
            rows = await self._pool.fetch(
                f"SELECT {_JOB_COLS} FROM jobs WHERE user_id = $1 AND status = $3 "
                "ORDER BY created_at DESC, id DESC LIMIT $2",
                user_id,
                _limit(limit),
                status.value,
            )
        return [_job(r) for r in rows]

    @_unavailable
    async def list_changed_since(self, user_id: str, since: datetime, *, limit: int) -> list[Job]:
        rows = await self._pool.fetch(
            f"SELECT {_JOB_COLS} FROM jobs WHERE user_id = $1 AND updated_at > $2 "
            "ORDER BY updated_at ASC, id ASC LIMIT $3",
            user_id,
            _ts(since),
            _limit(limit),
        )
        return [_job(r) for r in rows]

    @_unavailable
    async def count_unfinished(self, user_id: str) -> int:
        row = await self._pool.fetchrow(
            f"SELECT count(*) FROM jobs WHERE user_id = $1 AND status IN {_UNFINISHED}", user_id
        )
        return int(row[0]) if row is not None else 0

    @_unavailable
    async def list_unfinished_due(self, due_before: datetime, *, limit: int) -> list[Job]:
        rows = await self._pool.fetch(
            f"SELECT {_JOB_COLS} FROM jobs WHERE status IN {_UNFINISHED} AND scheduled_for < $1 "
            "ORDER BY scheduled_for ASC, id ASC LIMIT $2",
            _ts(due_before),
            _limit(limit),
        )
        return [_job(r) for r in rows]

    @_unavailable
    async def mark_processing(
        self,
        job_id: str,
        *,
        at: datetime,
        attempt: int,
        lease_until: datetime | None = None,
        owner: str | None = None,
    ) -> Job | None:
        row = await self._pool.fetchrow(
            _TAKE_JOB, job_id, _ts(at), attempt, _ts(lease_until), owner
        )
        return _job(row) if row else None

    @_unavailable
    async def mark_completed(self, job_id: str, *, result: Completion, at: datetime) -> bool:
        usage = None if result.usage is None else json.dumps(result.usage)
        written = await self._pool.execute(
            _COMPLETE_JOB, job_id, result.content, result.model, usage, _ts(at)
        )
        return written == 1

    @_unavailable
    async def mark_failed(self, job_id: str, *, error: str, at: datetime) -> bool:
        return await self._pool.execute(_FAIL_JOB, job_id, error, _ts(at)) == 1

    @_unavailable
    async def delete(self, job_id: str) -> None:
        await self._pool.execute("DELETE FROM jobs WHERE job_id = $1", job_id)


class PgContents:
    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    @_unavailable
    async def create_once(self, content: Content) -> tuple[Content, bool]:
        try:
            await self._pool.execute(
                "INSERT INTO contents (content_id, user_id, job_id, title, body, content_type, "
                "prompt, model, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                content.content_id,
                content.user_id,
                content.job_id,
                content.title,
                content.body,
                content.content_type,
                content.prompt,
                content.model,
                _ts(content.created_at),
            )
            return content, True
        except asyncpg.UniqueViolationError:
            # The unique index on job_id decided the race; hand back the winner.
            row = await self._pool.fetchrow(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE job_id = $1", content.job_id
            )
            if row is None:  # pragma: no cover - a concurrent delete, or a content_id clash
                raise
            return _content(row), False

    @_unavailable
    async def get_for_user(self, content_id: str, user_id: str) -> Content | None:
        row = await self._pool.fetchrow(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE content_id = $1 AND user_id = $2",
            content_id,
            user_id,
        )
        return _content(row) if row else None

    @_unavailable
    async def list_for_user(self, user_id: str, *, limit: int) -> list[Content]:
        rows = await self._pool.fetch(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE user_id = $1 "
            "ORDER BY created_at DESC, id DESC LIMIT $2",
            user_id,
            _limit(limit),
        )
        return [_content(r) for r in rows]


# --- the store --------------------------------------------------------------------------
class PostgresStore:
    """`Store` on asyncpg; `init()` creates or upgrades the schema through `sql.py`."""

    name = "postgresql"

    def __init__(self, url: str | URL, *, timeout: float = 5.0, pool_size: int = 15) -> None:
        from smartgen.store.sql import describe_url, sql_url

        self.url = sql_url(url) if isinstance(url, str) else url
        if self.url.get_backend_name() != "postgresql":
            raise ConfigError(f"PostgresStore needs a postgresql:// URL, not {self.url.drivername}")
        self.description = describe_url(self.url)
        self._timeout = timeout
        self._pool = _Pool(asyncpg_dsn(self.url), size=pool_size, timeout=timeout)
        self.users: UserRepository = PgUsers(self._pool)
        self.jobs: JobRepository = PgJobs(self._pool)
        self.contents: ContentRepository = PgContents(self._pool)

    async def init(self) -> None:
        """Create or upgrade the schema (idempotent, safe to run from several processes)."""
        from smartgen.store.sql import SqlStore

        # The schema lives in SQLAlchemy's metadata (sql_schema.py); its one-off engine
        # holds a single connection for the migration.
        schema = SqlStore(self.url, timeout=self._timeout, pool_size=1)
        try:
            await schema.init()
        finally:
            await schema.close()

    async def ping(self) -> None:
        try:
            await self._pool.fetchrow("SELECT 1")
        except Exception as error:
            if _is_unavailable(error):
                raise StoreUnavailable(f"PostgreSQL does not answer ({_reason(error)})") from error
            raise

    async def close(self) -> None:
        await self._pool.close()
