"""SQL store on SQLAlchemy 2 Core (async): SQLite (aiosqlite) and PostgreSQL (asyncpg).

The same records and semantics as `mongo.py`: state transitions are single conditional
`UPDATE … WHERE status IN (…)` statements judged by their row count, uniqueness comes from
unique indexes (email, job id, one content per job), datetimes go in and come out as UTC
with millisecond precision (SQLite has no time zone: it stores naive UTC, re-tagged on read).

Every statement is a single autocommitted statement (the engine runs in AUTOCOMMIT), so a
call costs one round trip and never leaves a transaction open; only `init()` uses an explicit
transaction.

The schema (tables, column types, its version and upgrades, and why not Alembic) is in
`sql_schema.py`; `SqlStore.init()` is how every SQL store creates or upgrades it.

Deployments run the direct stores, `postgres.py` (asyncpg) and `sqlite.py` (sqlite3), which
share their repositories in `sqlrepo.py` and cost a fraction of this one's CPU per
statement; this store stays complete, for any database SQLAlchemy speaks, and the contract
tests run it on PostgreSQL and SQLite.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    Executable,
    Integer,
    Row,
    and_,
    bindparam,
    event,
    exc,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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
from smartgen.store.sql_schema import (
    SCHEMA_VERSION,
    _migrate,
    contents,
    jobs,
    schema_version,
    users,
)
from smartgen.store.turns import Turns
from smartgen.store.unavailable import translate_unavailable

# The schema's names stay importable from here, where callers and tests have found them.
__all__ = [
    "SCHEMA_VERSION",
    "SqlContents",
    "SqlJobs",
    "SqlStore",
    "SqlUsers",
    "contents",
    "describe_url",
    "jobs",
    "schema_version",
    "sql_url",
    "users",
]

P = ParamSpec("P")
R = TypeVar("R")


# pg_advisory_xact_lock key for schema changes ("smartgen" in ASCII).
_SCHEMA_LOCK = 0x736D61727467656E
_UNFINISHED = [JobStatus.queued.value, JobStatus.processing.value]
_UNAVAILABLE_MESSAGE = "The database is unavailable; try again shortly"


_USER_COLS = [users.c.user_id, users.c.email, users.c.password_hash, users.c.created_at]
_JOB_COLS = [c for c in jobs.c if c.name != "id"]
_CONTENT_COLS = [c for c in contents.c if c.name not in ("id", "updated_at")]


# --- errors -----------------------------------------------------------------------------
def _is_unavailable(error: BaseException) -> bool:
    """Errors meaning "the database did not answer", not "the statement was wrong"."""
    if isinstance(error, exc.DBAPIError) and (
        error.connection_invalidated
        # No statement: connecting failed (refused, unknown database/role, too many
        # connections, server starting up): no statement was ever sent.
        or error.statement is None
    ):
        return True
    return isinstance(
        error,
        exc.OperationalError  # connection refused/lost, SQLite busy or unopenable
        | exc.InterfaceError  # connection closed under us
        | exc.DisconnectionError
        | exc.TimeoutError  # pool checkout timeout
        | TimeoutError  # asyncpg connect/command timeouts
        | OSError,  # refused/reset sockets that reach us unwrapped
    )


_unavailable = translate_unavailable(_is_unavailable, _UNAVAILABLE_MESSAGE)


def _reason(error: BaseException) -> str:
    """One line naming the driver's error, e.g. `InvalidCatalogNameError: database …`."""
    orig = getattr(error, "orig", None) or error
    # SQLAlchemy's asyncpg adapter wraps asyncpg's own (better named) exception.
    orig = orig.__cause__ or orig
    text_ = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text_[0]}" if text_ else type(orig).__name__


# --- URLs -------------------------------------------------------------------------------
def sql_url(raw: str) -> URL:
    """Normalise a DATABASE_URL to an async driver URL; `ConfigError` for anything else.

    Accepted: postgresql://, postgres://, postgresql+asyncpg:// (→ asyncpg; `sslmode` becomes
    asyncpg's `ssl`) and sqlite:///path, sqlite+aiosqlite:///path (→ aiosqlite).
    """
    try:
        url = make_url(raw.strip())
    except exc.ArgumentError:
        raise ConfigError(
            "DATABASE_URL is not a database URL: e.g. postgresql://user@host:5432/smartgen "
            "or sqlite:///./.smartgen/smartgen.db"
        ) from None
    if url.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        url = url.set(drivername="postgresql+asyncpg")
        if "sslmode" in url.query:
            query = dict(url.query)
            query["ssl"] = query.pop("sslmode")
            url = url.set(query=query)
        return url
    if url.drivername in ("sqlite", "sqlite+aiosqlite"):
        database = url.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            raise ConfigError(
                "DATABASE_URL: SQLite needs a file path (sqlite:///path/to/smartgen.db); the "
                "API and the worker are separate processes and must share it"
            )
        return url.set(drivername="sqlite+aiosqlite")
    raise ConfigError(
        f"DATABASE_URL: unsupported database {url.drivername!r}; use postgresql://… or sqlite:///…"
    )


def describe_url(url: URL) -> str:
    """`postgresql (host:5432/db)` or `sqlite (path, embedded)`: no credentials."""
    if url.get_backend_name() == "sqlite":
        return f"sqlite ({url.database}, embedded)"
    return f"postgresql ({url.host or 'localhost'}:{url.port or 5432}/{url.database or ''})"


# --- repositories -----------------------------------------------------------------------
class _Repository:
    def __init__(self, engine: AsyncEngine, turns: Turns) -> None:
        self._engine = engine
        self._turns = turns

    async def _first(
        self, stmt: Executable, params: dict[str, Any] | None = None
    ) -> Row[Any] | None:
        async with self._turns, self._engine.connect() as conn:
            return (await conn.execute(stmt, params)).first()

    async def _all(self, stmt: Executable) -> Sequence[Row[Any]]:
        async with self._turns, self._engine.connect() as conn:
            return (await conn.execute(stmt)).all()

    async def _rowcount(self, stmt: Executable, params: dict[str, Any] | None = None) -> int:
        async with self._turns, self._engine.connect() as conn:
            return int((await conn.execute(stmt, params)).rowcount)


def _limited(n: int) -> int | None:
    # As with a MongoDB cursor: 0 means no limit; a negative limit counts like a positive one.
    return abs(n) or None


def _user(row: Row[Any] | None) -> User | None:
    return None if row is None else User(**row._asdict())


def _job(row: Row[Any]) -> Job:
    fields = row._asdict()
    fields["status"] = JobStatus(fields["status"])
    fields["attempts"] = int(fields["attempts"] or 0)
    return Job(**fields)


def _content(row: Row[Any]) -> Content:
    return Content(**row._asdict())


class SqlUsers(_Repository):
    @_unavailable
    async def create(self, user: User) -> None:
        stmt = users.insert().values(
            user_id=user.user_id,
            email=user.email,
            password_hash=user.password_hash,
            created_at=user.created_at,
            updated_at=user.created_at,
        )
        try:
            await self._rowcount(stmt)
        except exc.IntegrityError:
            raise Conflict(
                "An account with this email already exists", code="email_taken"
            ) from None

    @_unavailable
    async def get(self, user_id: str) -> User | None:
        return _user(await self._first(select(*_USER_COLS).where(users.c.user_id == user_id)))

    @_unavailable
    async def get_by_email(self, email: str) -> User | None:
        return _user(await self._first(select(*_USER_COLS).where(users.c.email == email)))


# The hot statements (one per queued job, two per processed job) are built once with
# bind parameters: building a statement and its cache key on every call cost more CPU
# than executing it.
_CREATE_FIELDS = (
    "job_id",
    "user_id",
    "status",
    "prompt",
    "content_type",
    "scheduled_for",
    "created_at",
    "updated_at",
    "attempts",
)
_INSERT_JOB = jobs.insert()  # VALUES from the parameters' keys (the column names)
# INSERT INTO jobs (…) SELECT :v… WHERE (SELECT count(*) FROM jobs WHERE user_id = :u AND
# status IN ('queued', 'processing')) < :cap. Each value is bound with its column's type, so
# asyncpg gets typed parameters ($1::VARCHAR, …) in the FROM-less SELECT list.
_INSERT_JOB_UNDER_CAP = jobs.insert().from_select(
    [jobs.c[name] for name in _CREATE_FIELDS],
    select(*(bindparam(f"v_{name}", type_=jobs.c[name].type) for name in _CREATE_FIELDS)).where(
        select(func.count())
        .select_from(jobs)
        .where(jobs.c.user_id == bindparam("v_user_id"), jobs.c.status.in_(_UNFINISHED))
        .scalar_subquery()
        < bindparam("cap", type_=Integer())
    ),
)


def _take_job(*, with_owner: bool) -> Executable:
    # Parameter names differ from column names: those are reserved for SET/VALUES.
    free = [jobs.c.lease_until.is_(None), jobs.c.lease_until <= bindparam("at")]
    if with_owner:
        free.append(jobs.c.lease_owner == bindparam("owner"))
    takeable = or_(
        jobs.c.status == JobStatus.queued.value,
        and_(jobs.c.status == JobStatus.processing.value, or_(*free)),
    )
    return (
        jobs.update()
        .where(jobs.c.job_id == bindparam("key"), takeable)
        .values(
            status=JobStatus.processing.value,
            started_at=bindparam("at"),
            updated_at=bindparam("at"),
            attempts=bindparam("attempt"),
            lease_until=bindparam("until"),
            lease_owner=bindparam("owner"),
        )
        .returning(*_JOB_COLS)
    )


_TAKE_JOB = _take_job(with_owner=False)
_TAKE_JOB_AS_OWNER = _take_job(with_owner=True)
_COMPLETE_JOB = (
    jobs.update()
    .where(jobs.c.job_id == bindparam("key"), jobs.c.status == JobStatus.processing.value)
    .values(
        status=JobStatus.completed.value,
        generated_content=bindparam("content"),
        model=bindparam("model_name"),
        usage=bindparam("token_usage"),
        completed_at=bindparam("at"),
        updated_at=bindparam("at"),
        error=None,
    )
)


class SqlJobs(_Repository):
    @_unavailable
    async def create(self, job: Job, *, max_unfinished: int = 0) -> bool:
        # The same fields as the MongoDB store writes at creation; the rest come with the
        # transitions.
        values: dict[str, Any] = {
            "job_id": job.job_id,
            "user_id": job.user_id,
            "status": job.status.value,
            "prompt": job.prompt,
            "content_type": job.content_type,
            "scheduled_for": job.scheduled_for,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "attempts": job.attempts,
        }
        if max_unfinished <= 0:
            return await self._rowcount(_INSERT_JOB, values) == 1
        params = {f"v_{name}": value for name, value in values.items()}
        return await self._rowcount(_INSERT_JOB_UNDER_CAP, {**params, "cap": max_unfinished}) == 1

    @_unavailable
    async def get(self, job_id: str) -> Job | None:
        row = await self._first(select(*_JOB_COLS).where(jobs.c.job_id == job_id))
        return _job(row) if row else None

    @_unavailable
    async def get_for_user(self, job_id: str, user_id: str) -> Job | None:
        stmt = select(*_JOB_COLS).where(jobs.c.job_id == job_id, jobs.c.user_id == user_id)
        row = await self._first(stmt)
        return _job(row) if row else None

    @_unavailable
    async def list_for_user(
        self, user_id: str, *, limit: int, status: JobStatus | None = None
    ) -> list[Job]:
        stmt = select(*_JOB_COLS).where(jobs.c.user_id == user_id)
        if status is not None:
            stmt = stmt.where(jobs.c.status == status.value)
        stmt = stmt.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(_limited(limit))
        return [_job(r) for r in await self._all(stmt)]

    @_unavailable
    async def list_changed_since(self, user_id: str, since: datetime, *, limit: int) -> list[Job]:
        stmt = (
            select(*_JOB_COLS)
            .where(jobs.c.user_id == user_id, jobs.c.updated_at > since)
            .order_by(jobs.c.updated_at.asc(), jobs.c.id.asc())
            .limit(_limited(limit))
        )
        return [_job(r) for r in await self._all(stmt)]

    @_unavailable
    async def count_unfinished(self, user_id: str) -> int:
        stmt = (
            select(func.count())
            .select_from(jobs)
            .where(jobs.c.user_id == user_id, jobs.c.status.in_(_UNFINISHED))
        )
        row = await self._first(stmt)
        return int(row[0]) if row is not None else 0

    @_unavailable
    async def list_unfinished_due(self, due_before: datetime, *, limit: int) -> list[Job]:
        stmt = (
            select(*_JOB_COLS)
            .where(jobs.c.status.in_(_UNFINISHED), jobs.c.scheduled_for < due_before)
            .order_by(jobs.c.scheduled_for.asc(), jobs.c.id.asc())
            .limit(_limited(limit))
        )
        return [_job(r) for r in await self._all(stmt)]

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
        stmt = _TAKE_JOB if owner is None else _TAKE_JOB_AS_OWNER
        params = {
            "key": job_id,
            "at": at,
            "attempt": attempt,
            "until": lease_until,
            "owner": owner,
        }
        row = await self._first(stmt, params)
        return _job(row) if row else None

    @_unavailable
    async def mark_completed(self, job_id: str, *, result: Completion, at: datetime) -> bool:
        params = {
            "key": job_id,
            "content": result.content,
            "model_name": result.model,
            "token_usage": result.usage,
            "at": at,
        }
        return await self._rowcount(_COMPLETE_JOB, params) == 1

    @_unavailable
    async def mark_failed(self, job_id: str, *, error: str, at: datetime) -> bool:
        stmt = (
            jobs.update()
            .where(jobs.c.job_id == job_id, jobs.c.status.in_(_UNFINISHED))
            .values(status=JobStatus.failed.value, error=error, failed_at=at, updated_at=at)
        )
        return await self._rowcount(stmt) == 1

    @_unavailable
    async def delete(self, job_id: str) -> None:
        await self._rowcount(jobs.delete().where(jobs.c.job_id == job_id))


class SqlContents(_Repository):
    @_unavailable
    async def create_once(self, content: Content) -> tuple[Content, bool]:
        stmt = contents.insert().values(
            content_id=content.content_id,
            user_id=content.user_id,
            job_id=content.job_id,
            title=content.title,
            body=content.body,
            content_type=content.content_type,
            prompt=content.prompt,
            model=content.model,
            created_at=content.created_at,
            updated_at=content.created_at,
        )
        try:
            await self._rowcount(stmt)
            return content, True
        except exc.IntegrityError:
            # The unique index on job_id decided the race; hand back the winner.
            row = await self._first(
                select(*_CONTENT_COLS).where(contents.c.job_id == content.job_id)
            )
            if row is None:  # pragma: no cover - a concurrent delete, or a content_id clash
                raise
            return _content(row), False

    @_unavailable
    async def get_for_user(self, content_id: str, user_id: str) -> Content | None:
        stmt = select(*_CONTENT_COLS).where(
            contents.c.content_id == content_id, contents.c.user_id == user_id
        )
        row = await self._first(stmt)
        return _content(row) if row else None

    @_unavailable
    async def list_for_user(self, user_id: str, *, limit: int) -> list[Content]:
        stmt = (
            select(*_CONTENT_COLS)
            .where(contents.c.user_id == user_id)
            .order_by(contents.c.created_at.desc(), contents.c.id.desc())
            .limit(_limited(limit))
        )
        return [_content(r) for r in await self._all(stmt)]


# --- the store --------------------------------------------------------------------------
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout = 5000")
        # Safe with WAL (no corruption); a power cut may lose the last commits, not the file.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


class SqlStore:
    """`Store` over SQLAlchemy: `name` is "sqlite" or "postgresql"."""

    def __init__(self, url: str | URL, *, timeout: float = 5.0, pool_size: int = 15) -> None:
        self.url = url if isinstance(url, URL) else sql_url(url)
        self.description = describe_url(self.url)
        self.name = "sqlite" if self.url.get_backend_name() == "sqlite" else "postgresql"
        # Engines hold asyncio pools: create the store inside the running loop. A fixed
        # pool: overflow connections (on SQLite each a thread and an open file; on
        # PostgreSQL each with its statements prepared again) were opened and closed again
        # under load.
        fixed_pool: dict[str, Any] = {
            "isolation_level": "AUTOCOMMIT",
            "pool_size": pool_size,
            "max_overflow": 0,
            "pool_timeout": timeout,
        }
        if self.name == "sqlite":
            self._sqlite_directory = os.path.dirname(os.path.abspath(self.url.database or ""))
            engine = create_async_engine(self.url, **fixed_pool)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            # A pre-ping cost a round trip per statement. A connection the server dropped
            # fails one statement (503) and is discarded; `pool_recycle` retires old ones.
            engine = create_async_engine(
                self.url,
                **fixed_pool,
                pool_pre_ping=False,
                pool_recycle=1800,
                connect_args={
                    "timeout": timeout,
                    "command_timeout": 30,
                    "server_settings": {"application_name": "smartgen"},
                },
            )
        self._engine = engine
        # Annotated with the protocols: `Store`'s attributes are mutable, hence invariant.
        # A fixed pool entered in turn: see turns.py.
        turns = Turns(pool_size, timeout)
        self.users: UserRepository = SqlUsers(engine, turns)
        self.jobs: JobRepository = SqlJobs(engine, turns)
        self.contents: ContentRepository = SqlContents(engine, turns)

    async def init(self) -> None:
        """Create or upgrade the schema (idempotent, safe to run from several processes)."""
        try:
            if self.name == "sqlite":
                await self._init_sqlite()
            else:
                await self._init_postgresql()
        except (ConfigError, StoreUnavailable):
            raise
        except Exception as error:
            if _is_unavailable(error):
                raise StoreUnavailable(
                    f"Cannot open the {self.description} database: {_reason(error)}"
                ) from error
            raise

    async def _init_sqlite(self) -> None:
        directory = self._sqlite_directory
        try:
            await asyncio.to_thread(os.makedirs, directory, exist_ok=True)
        except OSError as error:
            raise StoreUnavailable(
                f"Cannot create the directory {directory!r} for the SQLite database: "
                f"{error.strerror or error}"
            ) from error
        # WAL is a property of the file, set once here. Switching to it can answer "database
        # is locked" at once (without waiting on busy_timeout) while another process opens
        # the same new file, so retry for a bounded time.
        for attempt in range(100):
            try:
                async with self._engine.connect() as conn:
                    await conn.exec_driver_sql("PRAGMA journal_mode = WAL")
                break
            except exc.OperationalError as error:
                if "locked" not in str(error) or attempt == 99:
                    raise
                await asyncio.sleep(0.05)
        async with self._engine.connect() as conn:
            # The engine autocommits; take the write lock for the whole check-and-create.
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                await conn.run_sync(_migrate)
            except BaseException:
                await conn.exec_driver_sql("ROLLBACK")
                raise
            await conn.exec_driver_sql("COMMIT")

    async def _init_postgresql(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK}
                )
                await conn.run_sync(_migrate)

    async def ping(self) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as error:
            if _is_unavailable(error):
                label = "SQLite" if self.name == "sqlite" else "PostgreSQL"
                raise StoreUnavailable(f"{label} does not answer") from error
            raise

    async def close(self) -> None:
        await self._engine.dispose()
