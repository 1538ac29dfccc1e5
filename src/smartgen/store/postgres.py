"""PostgreSQL store on asyncpg directly: the production SQL store.

The repositories and their statements are `sqlrepo.py`'s (shared with the SQLite store);
this module runs them on asyncpg. The schema is `sql_schema.py`'s (`init()` runs its
migration through `sql.py`); SQLAlchemy is not on the request path: its per-statement work
(compiling parameters, execution contexts, result processing, the greenlet bridge to
asyncpg) cost more CPU than the round trip it wrapped, about a quarter of the API's CPU per
queued job and a sixth of the worker's (see the README's performance section). Here each
call is a checkout from our pool and one prepared statement (asyncpg prepares and caches it
per connection).

Datetimes go in as aware UTC truncated to milliseconds (as MongoDB keeps them) and come
back as aware UTC; `usage` is JSONB, sent and read as JSON text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import asyncpg
from sqlalchemy.engine import URL

from smartgen.errors import StoreUnavailable
from smartgen.store import sqlrepo
from smartgen.store.turns import Turns
from smartgen.store.unavailable import translate_unavailable
from smartgen.times import as_utc

_UNAVAILABLE_MESSAGE = "The database is unavailable; try again shortly"


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


# --- connections ------------------------------------------------------------------------
IDLE_LIFETIME_SECONDS = 300.0  # an idle connection older than this is closed


class _Pool:
    """Up to `size` connections, opened on demand (a store is built before anything
    connects) and handed out in turn (`turns.py`).

    Not asyncpg's `Pool`: besides letting newcomers overtake its waiters, its per-checkout
    bookkeeping (a proxy object, an inactivity timer, a reset hook) cost about 16 µs per
    statement, more than a third of the statement's own client-side CPU. Idle connections
    sit on a stack (the most recently used first, so a burst's extra connections age out
    at the bottom)."""

    def __init__(self, dsn: str, *, size: int, timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._turns = Turns(size, timeout)
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
            await self._turns.acquire()
        except TimeoutError as error:
            raise _NoConnection("no database connection came free in time") from error
        try:
            return await self._take()
        except BaseException as error:
            self._turns.release()
            if isinstance(
                error, OSError | TimeoutError | asyncpg.PostgresError | asyncpg.InterfaceError
            ):
                raise _NoConnection(f"no database connection: {error}") from error
            raise

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


# --- the driver -----------------------------------------------------------------------
class _Driver:
    """`sqlrepo.Driver` on the pool: statements as written, datetimes as aware UTC."""

    unique_violation = asyncpg.UniqueViolationError

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    def statement(self, text: str) -> str:
        return text

    def ts(self, value: datetime | None) -> datetime | None:
        return _ts(value)

    def dt(self, value: Any) -> datetime | None:
        return cast(datetime | None, value)  # timestamptz comes back aware, in UTC

    def limit(self, n: int) -> int | None:
        return _limit(n)

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


# --- jobs: concurrent inserts in one statement -------------------------------------------
# A batch of new jobs in one INSERT: each row goes in unless its user's unfinished jobs,
# counted before the statement plus the user's earlier rows in the batch (`rank`), would
# exceed its cap, exactly as if the rows had been inserted one after another.
_JOB_INSERT_BATCH = (
    "WITH batch AS (SELECT b.*, "
    "row_number() OVER (PARTITION BY b.user_id ORDER BY b.n) AS rank "
    "FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::text[], $5::varchar[], "
    "$6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::integer[], $10::integer[]) "
    f"WITH ORDINALITY AS b({sqlrepo.JOB_CREATE_COLUMNS}, cap, n)) "
    f"INSERT INTO jobs ({sqlrepo.JOB_CREATE_COLUMNS}) "
    f"SELECT {sqlrepo.JOB_CREATE_COLUMNS} FROM batch "
    "WHERE batch.cap <= 0 OR (SELECT count(*) FROM jobs j WHERE j.user_id = batch.user_id "
    f"AND j.status IN {sqlrepo.UNFINISHED}) + batch.rank <= batch.cap "
    "RETURNING job_id"
)


class _Jobs(sqlrepo.CoalescedJobs):
    """A batch of concurrent creates is one statement (`_JOB_INSERT_BATCH`)."""

    async def _insert_many(self, rows: list[tuple[tuple[Any, ...], int]]) -> list[bool | Exception]:
        columns = list(zip(*((*values, cap) for values, cap in rows), strict=True))
        try:
            inserted = {row[0] for row in await self._db.all(_JOB_INSERT_BATCH, columns)}
        except asyncpg.PostgresError:
            # A value the server refuses (or a job id clash) fails the whole statement:
            # each row again on its own, so that only its own caller hears of it.
            # Unavailability (StoreUnavailable) fails them all, above this.
            return [await self._insert_alone(values, cap) for values, cap in rows]
        return [values[0] in inserted for values, _ in rows]

    async def _insert_alone(self, values: tuple[Any, ...], cap: int) -> bool | Exception:
        try:
            return await sqlrepo.Jobs._insert(self, values, cap)
        except Exception as error:  # this row's own failure, for its caller alone
            return error


# --- the store --------------------------------------------------------------------------
class PostgresStore(sqlrepo.DirectStore):
    """`Store` on asyncpg."""

    name = "postgresql"
    jobs_repository = _Jobs

    def __init__(self, url: str | URL, *, timeout: float = 5.0, pool_size: int = 15) -> None:
        super().__init__(url, timeout=timeout)
        self._pool = _Pool(asyncpg_dsn(self.url), size=pool_size, timeout=timeout)
        self._serve(_Driver(self._pool))

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
