"""PostgreSQL store on asyncpg: the production SQL store.

The repositories and their statements are `repository.py`'s (shared with the SQLite store);
this module runs them on asyncpg, each call one checkout and one prepared statement
(asyncpg prepares and caches it per connection). No ORM on the request path: an ORM's
per-statement work cost more CPU than the round trip it wrapped (`bench/HISTORY.md`).
Connections come from `fair_pool.FairPool`, or asyncpg's own pool with DB_FAIR_POOL=false.

Datetimes go in as aware UTC truncated to milliseconds (as MongoDB keeps them) and come
back as aware UTC; `usage` is JSONB, sent and read as JSON text.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

import asyncpg

from smartgen.errors import StoreUnavailable
from smartgen.kit.times import to_ms
from smartgen.store.sql import repository, schema
from smartgen.store.sql.fair_pool import FairPool
from smartgen.store.sql.url import SqlUrl
from smartgen.store.unavailable import NoConnection, translate_unavailable

T = TypeVar("T")

# SQLSTATE classes meaning "the server did not serve this": 08 connection exception,
# 53 insufficient resources (too many connections), 57 operator intervention (shutdown,
# cannot connect now), 3D invalid catalog (the database is gone), 28 authorisation.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57", "3D", "28")
_CONNECT_OPTIONS: dict[str, object] = {
    "command_timeout": 30,
    "server_settings": {"application_name": "smartgen"},
}


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(
        error,
        NoConnection
        | OSError
        | TimeoutError
        | asyncpg.InterfaceError  # the connection closed under us
        # The client's protocol state broke (e.g. a reply to a cancelled call): the
        # connection is closed on release, and a retry gets a fresh one.
        | asyncpg.exceptions.InternalClientError,
    ):
        return True
    # ConnectionDoesNotExistError (a lost connection) is SQLSTATE 08003.
    sqlstate = getattr(error, "sqlstate", None) or ""
    return isinstance(error, asyncpg.PostgresError) and (
        sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    )


def _reusable(error: BaseException | None) -> bool:
    """A statement error (constraint, syntax, …) leaves the connection idle and usable:
    every statement autocommits. Anything else (a lost connection, a timeout, a cancelled
    call with a reply still in flight, the server shutting the session down) does not."""
    if error is None:
        return True
    return isinstance(error, asyncpg.PostgresError) and not _is_unavailable(error)


_unavailable = translate_unavailable(_is_unavailable)


def _reason(error: BaseException) -> str:
    """One line naming the driver's error, e.g. `InvalidCatalogNameError: database …`."""
    cause = error.__cause__ if isinstance(error, NoConnection) and error.__cause__ else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def _affected(status: str) -> int:
    """The row count of a command tag: `UPDATE 1`, `INSERT 0 1`, `DELETE 0`."""
    return int(status.rsplit(" ", 1)[-1])


# --- connections ------------------------------------------------------------------------
class Connections(Protocol):
    def connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

    async def close(self) -> None: ...


class LibraryPool:
    """asyncpg's own pool (DB_FAIR_POOL=false), created on first use inside the loop."""

    def __init__(self, dsn: str, *, size: int, timeout: float) -> None:
        self._dsn = dsn
        self._size = size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    async def _get(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._closed:
                    raise NoConnection("the store is closed")
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=0,
                        max_size=self._size,
                        timeout=self._timeout,
                        max_inactive_connection_lifetime=300.0,
                        **_CONNECT_OPTIONS,
                    )
        return self._pool

    def connection(self) -> _LibraryCheckout:
        return _LibraryCheckout(self)

    async def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            await asyncio.wait_for(self._pool.close(), 5)


class _LibraryCheckout:
    def __init__(self, pool: LibraryPool) -> None:
        self._owner = pool
        self._conn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self._pool = await self._owner._get()
            self._conn = await self._pool.acquire(timeout=self._owner._timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise NoConnection(f"no database connection: {error}") from error
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None and self._pool is not None:
            await self._pool.release(self._conn)
            self._conn = None


# --- the driver -----------------------------------------------------------------------
class _Driver:
    """`repository.Driver` on the pool: statements as written, datetimes as aware UTC."""

    unique_violation = asyncpg.UniqueViolationError
    no_limit = None  # LIMIT NULL

    def __init__(self, pool: Connections) -> None:
        self._pool = pool

    def statement(self, text: str) -> str:
        return text

    def ts(self, value: datetime | None) -> datetime | None:
        return None if value is None else to_ms(value)

    def dt(self, value: Any) -> datetime | None:
        return cast(datetime | None, value)  # timestamptz comes back aware, in UTC

    @_unavailable
    async def one(self, sql: str, args: Sequence[Any]) -> Any:
        async with self._pool.connection() as conn:
            return await conn.fetchrow(sql, *args)

    @_unavailable
    async def all(self, sql: str, args: Sequence[Any]) -> list[Any]:
        async with self._pool.connection() as conn:
            return list(await conn.fetch(sql, *args))

    @_unavailable
    async def changes(self, sql: str, args: Sequence[Any]) -> int:
        async with self._pool.connection() as conn:
            return _affected(await conn.execute(sql, *args))

    @_unavailable
    async def many(self, sql: str, calls: Sequence[Sequence[Any]]) -> list[Any]:
        """`sql` run once per argument list, pipelined in one round trip and one implicit
        transaction (each run sees the writes of the runs before it; an error undoes them
        all): the rows of every run, in order."""
        async with self._pool.connection() as conn:
            return list(await conn.fetchmany(sql, calls))

    @_unavailable
    async def admitted(self, users: Iterable[str], sql: str, args: Sequence[Any]) -> list[Any]:
        """`sql`'s rows, run in a transaction that first holds each user's admission lock
        (`admission_locks`), so that its counts see every insert committed before."""
        async with self._pool.connection() as conn:
            try:
                # One round trip: no parameters, so the simple protocol takes them all.
                await conn.execute(f"BEGIN; {admission_locks(users)}")
                rows = await conn.fetch(sql, *args)
            except asyncpg.PostgresError as error:
                if _reusable(error):  # the connection goes back to the pool: end it clean
                    await conn.execute("ROLLBACK")
                raise
            # Otherwise the pool closes the connection, and the server rolls back.
            await conn.execute("COMMIT")
            return list(rows)


# --- admission: one submit at a time per user -------------------------------------------------
# The cap's count and insert are one statement, but under READ COMMITTED two racing
# statements can each count the other's row out (neither is committed when the other
# takes its snapshot), and both go in. So capped inserts run in a transaction that first
# takes a transaction-scoped advisory lock per user: a second submit of the same user
# waits for the first to commit, and its INSERT, a new statement, takes a new snapshot
# that sees the first row. Nothing lasts past the transaction (no counter to drift; a
# crash releases the lock with the session). Keys: (ADMISSION_LOCK_CLASS, crc32 of the
# user id) in the two-integer key space, apart from the schema's one-bigint lock; two
# users sharing a crc32 only wait for each other. Locks are taken in key order, so two
# transactions locking several users (coalesced inserts) never deadlock.
ADMISSION_LOCK_CLASS = 0x736D6701  # "smg" + 1


def _int4(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def admission_locks(users: Iterable[str]) -> str:
    """The statements that take the users' admission locks, in key order (integers
    computed here: no user text reaches the SQL)."""
    keys = sorted({_int4(zlib.crc32(user.encode())) for user in users})
    return "".join(f"SELECT pg_advisory_xact_lock({ADMISSION_LOCK_CLASS}, {key});" for key in keys)


# --- jobs: concurrent inserts in one statement -------------------------------------------
# A batch of new jobs in one INSERT: each row goes in unless its user's unfinished jobs,
# counted before the statement plus the user's earlier rows in the batch (`rank`), would
# exceed its cap, exactly as if the rows had been inserted one after another.
_JOB_INSERT_BATCH = (
    "WITH batch AS (SELECT b.*, "
    "row_number() OVER (PARTITION BY b.user_id ORDER BY b.n) AS rank "
    "FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::text[], $5::varchar[], "
    "$6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::integer[], $10::text[], "
    "$11::varchar[], $12::integer[]) "
    f"WITH ORDINALITY AS b({repository.JOB_CREATE_COLUMNS}, cap, n)) "
    f"INSERT INTO jobs ({repository.JOB_CREATE_COLUMNS}) "
    f"SELECT {repository.JOB_CREATE_COLUMNS.replace('options', 'options::jsonb')} FROM batch "
    "WHERE batch.cap <= 0 OR (SELECT count(*) FROM jobs j WHERE j.user_id = batch.user_id "
    f"AND j.status IN {repository.UNFINISHED} AND j.batch_held = 0) + batch.rank <= batch.cap "
    "RETURNING job_id"
)


class _Jobs(repository.CoalescedJobs):
    """A batch of concurrent creates is one statement (`_JOB_INSERT_BATCH`); capped ones
    run under their users' admission locks (`admission_locks`). A batch of the worker's
    takes or completions is one round trip (`_Driver.many`): each call's own statement,
    in arrival order, with its index in the batch returned beside its row, so each
    outcome is as if alone."""

    def __init__(self, driver: repository.Driver, statements: dict[str, str]) -> None:
        super().__init__(driver, statements)
        self._insert_one_under_cap = statements["job_insert_under_cap"] + " RETURNING job_id"
        # The call's index in its batch comes back as the last column.
        self._take_indexed = statements["job_take"] + ", $7::integer"
        self._complete_indexed = statements["job_complete"] + " RETURNING $11::integer"

    async def _insert_batch(
        self, rows: list[tuple[tuple[Any, ...], int]]
    ) -> Sequence[bool | Exception]:
        if len(rows) == 1 and rows[0][1] > 0:
            return [await self._insert_alone(*rows[0])]
        return await super()._insert_batch(rows)

    async def _insert_many(self, rows: list[tuple[tuple[Any, ...], int]]) -> list[bool | Exception]:
        columns = list(zip(*((*values, cap) for values, cap in rows), strict=True))
        capped = [values[1] for values, cap in rows if cap > 0]
        driver = cast(_Driver, self._db)
        try:
            if capped:
                found = await driver.admitted(capped, _JOB_INSERT_BATCH, columns)
            else:
                found = await driver.all(_JOB_INSERT_BATCH, columns)
        except asyncpg.PostgresError:
            # A value the server refuses (or a job id clash) fails the whole statement:
            # each row again on its own, so that only its own caller hears of it.
            # Unavailability (StoreUnavailable) fails them all, above this.
            return [await self._insert_alone(values, cap) for values, cap in rows]
        inserted = {row[0] for row in found}
        return [values[0] in inserted for values, _ in rows]

    async def _indexed(self, sql: str, calls: list[tuple[Any, ...]]) -> dict[int, Any] | None:
        """The rows of `sql` (one of the `_…_indexed` statements) run for each call, by
        the call's index; None when the server refused one of them (none took effect)."""
        try:
            rows = await cast(_Driver, self._db).many(
                sql, [(*args, i) for i, args in enumerate(calls)]
            )
        except asyncpg.PostgresError:
            return None
        return {row[-1]: row for row in rows}

    async def _take_many(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        taken = await self._indexed(self._take_indexed, calls)
        if taken is None:  # each call again on its own: only its own caller hears of it
            return [await _own(repository.Jobs._take(self, args)) for args in calls]
        return [taken[i][:-1] if i in taken else None for i in range(len(calls))]

    async def _complete_many(self, calls: list[tuple[Any, ...]]) -> list[bool | Exception]:
        written = await self._indexed(self._complete_indexed, calls)
        if written is None:
            return [await _own(repository.Jobs._complete(self, args)) for args in calls]
        return [i in written for i in range(len(calls))]

    async def _insert_alone(self, values: tuple[Any, ...], cap: int) -> bool | Exception:
        try:
            if cap <= 0:
                return await repository.Jobs._insert(self, values, cap)
            driver = cast(_Driver, self._db)
            args = (*values, cap)
            return bool(await driver.admitted([values[1]], self._insert_one_under_cap, args))
        except Exception as error:  # this row's own failure, for its caller alone
            return error


async def _own(call: Awaitable[T]) -> T | Exception:
    """`call`'s result, or the statement error that refused it (for its caller alone);
    unavailability still fails the whole batch."""
    try:
        return await call
    except asyncpg.PostgresError as error:
        return cast(Exception, error)  # asyncpg is untyped


# --- the store --------------------------------------------------------------------------
class PostgresStore(repository.SqlStore):
    """`Store` on asyncpg."""

    name = "postgresql"
    dialect = "postgresql"
    jobs_repository = _Jobs

    def __init__(
        self,
        url: SqlUrl | str,
        *,
        timeout: float = 5.0,
        pool_size: int = 15,
        fair_pool: bool = True,
    ) -> None:
        super().__init__(url)
        self._timeout = timeout
        target = self.url.target
        self._pool: Connections = (
            FairPool(
                target,
                size=pool_size,
                timeout=timeout,
                connect_options=_CONNECT_OPTIONS,
                reusable=_reusable,
            )
            if fair_pool
            else LibraryPool(target, size=pool_size, timeout=timeout)
        )
        self._serve(_Driver(self._pool))

    async def init(self) -> None:
        """Create or upgrade the schema (idempotent, safe to run from several processes)."""
        try:
            conn = await asyncpg.connect(self.url.target, timeout=self._timeout, **_CONNECT_OPTIONS)
        except Exception as error:
            if _is_unavailable(error) or isinstance(error, asyncpg.PostgresError):
                raise StoreUnavailable(
                    f"Cannot open the {self.description} database: {_reason(error)}"
                ) from error
            raise
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", schema.SCHEMA_LOCK)
                exists = await conn.fetchval(schema.VERSION_TABLE_EXISTS[self.dialect])
                current = await conn.fetchval(schema.CURRENT_VERSION) if exists else None
                for statement in schema.migration(self.dialect, current):
                    await conn.execute(statement)
        finally:
            await conn.close()

    async def ping(self) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.fetchrow("SELECT 1")
        except Exception as error:
            if _is_unavailable(error):
                raise StoreUnavailable(f"PostgreSQL does not answer ({_reason(error)})") from error
            raise

    async def close(self) -> None:
        await self._pool.close()
