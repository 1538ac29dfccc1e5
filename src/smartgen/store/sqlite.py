"""SQLite store on the standard library's `sqlite3`: the embedded default.

The same records, statements and semantics as the SQLAlchemy store in `sql.py` (which owns
the schema: `init()` runs its migration and switches the file to WAL), and the same file
format, so either store opens a database the other wrote.

Each call runs its whole statement (execute, fetch, close) in one trip to a small thread
pool, on a connection of its own taken first come, first served. Through SQLAlchemy and
aiosqlite a statement was three to four thread hops (cursor, execute, fetch, close), each a
futex wake-up and a write to the event loop's pipe: 2 ms of CPU per queued job, most of
it in the kernel. SQLite's own waits (another process holding the write lock, up to
`busy_timeout`) block a pool thread, never the event loop.

Datetimes are stored as SQLAlchemy stores them on SQLite: naive UTC text
(`2026-01-11 19:34:18.356000`), which compares correctly as a string; they come back as
aware UTC. `usage` is JSON text.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

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

T = TypeVar("T")
_UNAVAILABLE_MESSAGE = "The database is unavailable; try again shortly"
BUSY_TIMEOUT_MS = 5000

_USER_COLS = "user_id, email, password_hash, created_at"
_JOB_FIELDS = [f.name for f in fields(Job)]
_JOB_COLS = ", ".join(_JOB_FIELDS)
_CONTENT_FIELDS = [f.name for f in fields(Content)]
_CONTENT_COLS = ", ".join(_CONTENT_FIELDS)
_UNFINISHED = "('queued', 'processing')"
_JOB_TIMES = [i for i, f in enumerate(fields(Job)) if f.name.endswith(("_at", "_for", "_until"))]
_STATUS = _JOB_FIELDS.index("status")
_USAGE = _JOB_FIELDS.index("usage")
_CONTENT_CREATED = _CONTENT_FIELDS.index("created_at")
_ATTEMPTS = _JOB_FIELDS.index("attempts")


# --- errors -----------------------------------------------------------------------------
class _NoConnection(Exception):
    """No connection could be had: the store is closed, or a turn did not come in time."""


def _is_unavailable(error: BaseException) -> bool:
    # OperationalError: locked past busy_timeout, cannot open the file, disk I/O errors.
    return isinstance(error, _NoConnection | sqlite3.OperationalError | OSError | TimeoutError)


_unavailable = translate_unavailable(_is_unavailable, _UNAVAILABLE_MESSAGE)


# --- values -----------------------------------------------------------------------------
def _ts(value: datetime | None) -> str | None:
    """Naive UTC text, truncated to milliseconds: SQLAlchemy's storage format."""
    if value is None:
        return None
    value = as_utc(value)
    value = value.replace(microsecond=value.microsecond // 1000 * 1000, tzinfo=None)
    return value.isoformat(sep=" ", timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def _limit(n: int) -> int:
    # As with a MongoDB cursor: 0 means no limit (LIMIT -1 in SQLite); a negative limit
    # counts like a positive one.
    return abs(n) or -1


def _user(row: Sequence[Any] | None) -> User | None:
    if row is None:
        return None
    user_id, email, password_hash, created_at = row
    return User(user_id, email, password_hash, _dt(created_at))  # type: ignore[arg-type]


def _job(row: Sequence[Any]) -> Job:
    values = list(row)
    for i in _JOB_TIMES:
        values[i] = _dt(values[i])
    values[_STATUS] = JobStatus(values[_STATUS])
    if values[_USAGE] is not None:
        values[_USAGE] = json.loads(values[_USAGE])
    values[_ATTEMPTS] = int(values[_ATTEMPTS] or 0)
    return Job(*values)


def _content(row: Sequence[Any]) -> Content:
    values = list(row)
    values[_CONTENT_CREATED] = _dt(values[_CONTENT_CREATED])
    return Content(*values)


# --- connections ------------------------------------------------------------------------
class _Pool:
    """Up to `size` connections to one file and as many threads, entered in turn (a FIFO
    semaphore: first come, first served, each wait bounded by `timeout`)."""

    def __init__(self, path: str, *, size: int, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._turns = asyncio.Semaphore(size)
        self._idle: list[sqlite3.Connection] = []
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="smartgen-sqlite")
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        # Autocommit (isolation_level=None): every statement is its own transaction.
        conn = sqlite3.connect(
            self._path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Safe with WAL (no corruption); a power cut may lose the last commits, not the file.
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` in a pool thread, on a connection no one else is using."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                await self._turns.acquire()
        except TimeoutError as error:
            raise _NoConnection("no database connection came free in time") from error
        conn = self._idle.pop() if self._idle else None

        def call() -> _Outcome[T]:
            # Never raises: the connection must come back to the pool whatever happened.
            try:
                opened = conn or self._open()
            except BaseException as error:
                return _Outcome(None, None, error)
            try:
                return _Outcome(opened, work(opened), None)
            except BaseException as error:
                return _Outcome(opened, None, error)

        try:
            if self._closed:
                raise _NoConnection("the store is closed")
            job = self._threads.submit(call)
        except BaseException:
            self._give_back(_Outcome(conn, None, None))
            raise
        try:
            outcome = await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # The thread may still use the connection: it comes back when the thread is done.
            job.add_done_callback(
                lambda done: loop.call_soon_threadsafe(self._give_back, done.result())
            )
            raise
        self._give_back(outcome)
        if outcome.error is not None:
            raise outcome.error
        return outcome.result  # type: ignore[return-value]

    def _give_back(self, outcome: _Outcome[Any]) -> None:
        """Release the turn; keep the connection unless the store closed or an operational
        error (I/O, locked past busy_timeout, …) may have left it unusable. A statement
        error (a constraint, …) leaves it usable: every statement autocommits."""
        try:
            conn, error = outcome.connection, outcome.error
            if conn is None:
                return
            reusable = error is None or (
                isinstance(error, sqlite3.Error) and not isinstance(error, sqlite3.OperationalError)
            )
            if reusable and not self._closed:
                self._idle.append(conn)
            else:
                conn.close()
        finally:
            self._turns.release()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.to_thread(self._threads.shutdown, wait=True)
        for conn in idle:
            conn.close()


@dataclass(slots=True)
class _Outcome(Generic[T]):
    connection: sqlite3.Connection | None
    result: T | None
    error: BaseException | None


Params = Sequence[Any] | dict[str, Any]


def _fetchone(sql: str, args: Params) -> Callable[[sqlite3.Connection], Any]:
    def work(conn: sqlite3.Connection) -> Any:
        cursor = conn.execute(sql, args)
        try:
            return cursor.fetchone()
        finally:
            cursor.close()

    return work


def _fetchall(sql: str, args: Params) -> Callable[[sqlite3.Connection], list[Any]]:
    def work(conn: sqlite3.Connection) -> list[Any]:
        cursor = conn.execute(sql, args)
        try:
            return cursor.fetchall()
        finally:
            cursor.close()

    return work


def _execute(sql: str, args: Params) -> Callable[[sqlite3.Connection], int]:
    def work(conn: sqlite3.Connection) -> int:
        cursor = conn.execute(sql, args)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    return work


# --- repositories -----------------------------------------------------------------------
class _Repository:
    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    async def _one(self, sql: str, *args: Any) -> Any:
        return await self._pool.run(_fetchone(sql, args))

    async def _all(self, sql: str, *args: Any) -> list[Any]:
        return await self._pool.run(_fetchall(sql, args))

    async def _changes(self, sql: str, *args: Any) -> int:
        return await self._pool.run(_execute(sql, args))


class SqliteUsers(_Repository):
    @_unavailable
    async def create(self, user: User) -> None:
        try:
            await self._changes(
                "INSERT INTO users (user_id, email, password_hash, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                user.user_id,
                user.email,
                user.password_hash,
                _ts(user.created_at),
                _ts(user.created_at),
            )
        except sqlite3.IntegrityError:
            raise Conflict(
                "An account with this email already exists", code="email_taken"
            ) from None

    @_unavailable
    async def get(self, user_id: str) -> User | None:
        return _user(await self._one(f"SELECT {_USER_COLS} FROM users WHERE user_id = ?", user_id))

    @_unavailable
    async def get_by_email(self, email: str) -> User | None:
        return _user(await self._one(f"SELECT {_USER_COLS} FROM users WHERE email = ?", email))


_CREATE_COLS = (
    "job_id, user_id, status, prompt, content_type, scheduled_for, created_at, updated_at, attempts"
)
_INSERT_JOB = f"INSERT INTO jobs ({_CREATE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_JOB_UNDER_CAP = (
    f"INSERT INTO jobs ({_CREATE_COLS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? "
    f"WHERE (SELECT count(*) FROM jobs WHERE user_id = ? AND status IN {_UNFINISHED}) < ?"
)
_TAKE_JOB = (
    "UPDATE jobs SET status = 'processing', started_at = :at, updated_at = :at, "
    "attempts = :attempt, lease_until = :until, lease_owner = :owner "
    "WHERE job_id = :key AND (status = 'queued' OR (status = 'processing' AND "
    "(lease_until IS NULL OR lease_until <= :at OR lease_owner = :owner))) "
    f"RETURNING {_JOB_COLS}"
)
_COMPLETE_JOB = (
    "UPDATE jobs SET status = 'completed', generated_content = ?, model = ?, usage = ?, "
    "completed_at = ?, updated_at = ?, error = NULL WHERE job_id = ? AND status = 'processing'"
)
_FAIL_JOB = (
    "UPDATE jobs SET status = 'failed', error = ?, failed_at = ?, updated_at = ? "
    f"WHERE job_id = ? AND status IN {_UNFINISHED}"
)


class SqliteJobs(_Repository):
    @_unavailable
    async def create(self, job: Job, *, max_unfinished: int = 0) -> bool:
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
            return await self._changes(_INSERT_JOB, *values) == 1
        written = await self._changes(_INSERT_JOB_UNDER_CAP, *values, job.user_id, max_unfinished)
        return written == 1

    @_unavailable
    async def get(self, job_id: str) -> Job | None:
        row = await self._one(f"SELECT {_JOB_COLS} FROM jobs WHERE job_id = ?", job_id)
        return _job(row) if row else None

    @_unavailable
    async def get_for_user(self, job_id: str, user_id: str) -> Job | None:
        row = await self._one(
            f"SELECT {_JOB_COLS} FROM jobs WHERE job_id = ? AND user_id = ?", job_id, user_id
        )
        return _job(row) if row else None

    @_unavailable
    async def list_for_user(
        self, user_id: str, *, limit: int, status: JobStatus | None = None
    ) -> list[Job]:
        if status is None:
            rows = await self._all(
                f"SELECT {_JOB_COLS} FROM jobs WHERE user_id = ? "
                "ORDER BY created_at DESC, id DESC LIMIT ?",
                user_id,
                _limit(limit),
            )
        else:
            rows = await self._all(
                f"SELECT {_JOB_COLS} FROM jobs WHERE user_id = ? AND status = ? "
                "ORDER BY created_at DESC, id DESC LIMIT ?",
                user_id,
                status.value,
                _limit(limit),
            )
        return [_job(r) for r in rows]

    @_unavailable
    async def list_changed_since(self, user_id: str, since: datetime, *, limit: int) -> list[Job]:
        rows = await self._all(
            f"SELECT {_JOB_COLS} FROM jobs WHERE user_id = ? AND updated_at > ? "
            "ORDER BY updated_at ASC, id ASC LIMIT ?",
            user_id,
            _ts(since),
            _limit(limit),
        )
        return [_job(r) for r in rows]

    @_unavailable
    async def count_unfinished(self, user_id: str) -> int:
        row = await self._one(
            f"SELECT count(*) FROM jobs WHERE user_id = ? AND status IN {_UNFINISHED}", user_id
        )
        return int(row[0]) if row is not None else 0

    @_unavailable
    async def list_unfinished_due(self, due_before: datetime, *, limit: int) -> list[Job]:
        rows = await self._all(
            f"SELECT {_JOB_COLS} FROM jobs WHERE status IN {_UNFINISHED} AND scheduled_for < ? "
            "ORDER BY scheduled_for ASC, id ASC LIMIT ?",
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
        params = {
            "key": job_id,
            "at": _ts(at),
            "attempt": attempt,
            "until": _ts(lease_until),
            "owner": owner,
        }
        row = await self._pool.run(_fetchone(_TAKE_JOB, params))
        return _job(row) if row else None

    @_unavailable
    async def mark_completed(self, job_id: str, *, result: Completion, at: datetime) -> bool:
        usage = None if result.usage is None else json.dumps(result.usage)
        when = _ts(at)
        written = await self._changes(
            _COMPLETE_JOB, result.content, result.model, usage, when, when, job_id
        )
        return written == 1

    @_unavailable
    async def mark_failed(self, job_id: str, *, error: str, at: datetime) -> bool:
        when = _ts(at)
        return await self._changes(_FAIL_JOB, error, when, when, job_id) == 1

    @_unavailable
    async def delete(self, job_id: str) -> None:
        await self._changes("DELETE FROM jobs WHERE job_id = ?", job_id)


class SqliteContents(_Repository):
    @_unavailable
    async def create_once(self, content: Content) -> tuple[Content, bool]:
        try:
            await self._changes(
                "INSERT INTO contents (content_id, user_id, job_id, title, body, content_type, "
                "prompt, model, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                content.content_id,
                content.user_id,
                content.job_id,
                content.title,
                content.body,
                content.content_type,
                content.prompt,
                content.model,
                _ts(content.created_at),
                _ts(content.created_at),
            )
            return content, True
        except sqlite3.IntegrityError:
            # The unique index on job_id decided the race; hand back the winner.
            row = await self._one(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE job_id = ?", content.job_id
            )
            if row is None:  # pragma: no cover - a concurrent delete, or a content_id clash
                raise
            return _content(row), False

    @_unavailable
    async def get_for_user(self, content_id: str, user_id: str) -> Content | None:
        row = await self._one(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE content_id = ? AND user_id = ?",
            content_id,
            user_id,
        )
        return _content(row) if row else None

    @_unavailable
    async def list_for_user(self, user_id: str, *, limit: int) -> list[Content]:
        rows = await self._all(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE user_id = ? "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            user_id,
            _limit(limit),
        )
        return [_content(r) for r in rows]


# --- the store --------------------------------------------------------------------------
class SqliteStore:
    """`Store` on sqlite3; `init()` creates or upgrades the schema through `sql.py`."""

    name = "sqlite"

    def __init__(self, url: str | URL, *, timeout: float = 5.0, pool_size: int = 15) -> None:
        from smartgen.store.sql import describe_url, sql_url

        self.url = sql_url(url) if isinstance(url, str) else url
        if self.url.get_backend_name() != "sqlite":
            raise ConfigError(f"SqliteStore needs a sqlite:/// URL, not {self.url.drivername}")
        self.description = describe_url(self.url)
        self.path = os.path.abspath(self.url.database or "")
        self._timeout = timeout
        self._pool = _Pool(self.path, size=pool_size, timeout=timeout)
        self.users: UserRepository = SqliteUsers(self._pool)
        self.jobs: JobRepository = SqliteJobs(self._pool)
        self.contents: ContentRepository = SqliteContents(self._pool)

    async def init(self) -> None:
        """Create the directory and the file, switch it to WAL, create or upgrade the
        schema (idempotent, safe to run from several processes)."""
        from smartgen.store.sql import SqlStore

        schema = SqlStore(self.url, timeout=self._timeout, pool_size=1)
        try:
            await schema.init()
        finally:
            await schema.close()

    async def ping(self) -> None:
        try:
            await self._pool.run(_fetchone("SELECT 1", ()))
        except Exception as error:
            if _is_unavailable(error):
                raise StoreUnavailable("SQLite does not answer") from error
            raise

    async def close(self) -> None:
        await self._pool.close()
