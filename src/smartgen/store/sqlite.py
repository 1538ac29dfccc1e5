"""SQLite store on the standard library's `sqlite3`: the embedded default.

The repositories and their statements are `sqlrepo.py`'s (shared with the PostgreSQL
store); this module runs them on sqlite3. The schema is `sql_schema.py`'s (`init()` runs its
migration through `sql.py` and switches the file to WAL), in the same file format as the
SQLAlchemy store, so either store opens a database the other wrote.

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
import functools
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

from sqlalchemy.engine import URL

from smartgen.batching import Coalescer
from smartgen.errors import StoreUnavailable
from smartgen.store import sqlrepo
from smartgen.store.turns import Turns
from smartgen.store.unavailable import translate_unavailable
from smartgen.times import as_utc

T = TypeVar("T")
_UNAVAILABLE_MESSAGE = "The database is unavailable; try again shortly"
BUSY_TIMEOUT_MS = 5000


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


# --- connections ------------------------------------------------------------------------
class _Pool:
    """Up to `size` connections to one file and as many threads, entered in turn
    (`turns.py`). Writes also take this process's one write turn first: SQLite lets one
    writer in at a time, and a writer that finds the file locked waits in SQLite's busy
    handler, which sleeps 1, 2, 5, 10 … 100 ms between tries whatever the lock's holder
    does. Two of this process's writes never meet there; they queue here, and the next
    one starts the moment the last one ends. (Another process's writer — the worker's,
    or another API process's — still meets them in the busy handler.)"""

    def __init__(self, path: str, *, size: int, timeout: float) -> None:
        self._path = path
        self._turns = Turns(size, timeout)
        self._write_turn = Turns(1, timeout)
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

    async def run(self, work: Callable[[sqlite3.Connection], T], *, writes: bool) -> T:
        """`work(connection)` in a pool thread, on a connection no one else is using;
        `writes`: after the write turn."""
        loop = asyncio.get_running_loop()
        if writes:
            try:
                await self._write_turn.acquire()
            except TimeoutError as error:
                raise _NoConnection("the write turn did not come in time") from error
        try:
            await self._turns.acquire()
        except BaseException as error:
            if writes:
                self._write_turn.release()
            if isinstance(error, TimeoutError):
                raise _NoConnection("no database connection came free in time") from error
            raise
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
            self._give_back(_Outcome(conn, None, None), writes)
            raise
        try:
            outcome = await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # The thread may still use the connection (and hold the file's write lock): both
            # come back when the thread is done.
            job.add_done_callback(
                lambda done: loop.call_soon_threadsafe(self._give_back, done.result(), writes)
            )
            raise
        self._give_back(outcome, writes)
        if outcome.error is not None:
            raise outcome.error
        return outcome.result  # type: ignore[return-value]

    def _give_back(self, outcome: _Outcome[Any], writes: bool) -> None:
        """Release the turns; keep the connection unless the store closed or an operational
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
            if writes:
                self._write_turn.release()

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


def _statement(
    sql: str, args: Sequence[Any], take: Callable[[sqlite3.Cursor], T]
) -> Callable[[sqlite3.Connection], T]:
    """Work for a pool thread: run one statement and `take` its result from the cursor."""

    def work(conn: sqlite3.Connection) -> T:
        cursor = conn.execute(sql, args)
        try:
            return take(cursor)
        finally:
            cursor.close()

    return work


def _each_in_one_transaction(
    statements: list[tuple[str, Sequence[Any]]], take: Callable[[sqlite3.Cursor], T]
) -> Callable[[sqlite3.Connection], list[T | Exception]]:
    """Work for a pool thread: the statements in one transaction (one commit, one trip),
    in order, each in a savepoint of its own, so one that fails is undone alone and
    reported to its caller while the others commit; `take` reads each one's result. A
    failure of the transaction itself fails them all."""

    def work(conn: sqlite3.Connection) -> list[T | Exception]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes: list[T | Exception] = []
            for sql, args in statements:
                conn.execute("SAVEPOINT one")
                try:
                    cursor = conn.execute(sql, args)
                    try:
                        outcomes.append(take(cursor))
                    finally:
                        cursor.close()
                except sqlite3.OperationalError:
                    raise  # locked, I/O, …: the whole transaction is in doubt
                except sqlite3.Error as error:
                    conn.execute("ROLLBACK TO one")
                    outcomes.append(error)
                conn.execute("RELEASE one")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    return work


@functools.lru_cache(maxsize=256)
def _writes(sql: str) -> bool:
    """Whether a statement writes (the repositories' statements are a fixed set)."""
    return sql.lstrip().split(None, 1)[0].upper() != "SELECT"


def _rows(cursor: sqlite3.Cursor) -> list[Any]:
    return cursor.fetchall()


def _row(cursor: sqlite3.Cursor) -> Any:
    return cursor.fetchone()


def _rowcount(cursor: sqlite3.Cursor) -> int:
    return int(cursor.rowcount)


# --- the driver -----------------------------------------------------------------------
class _Driver:
    """`sqlrepo.Driver` on the pool: `$n` parameters become `?n`, casts go (SQLite's types
    are affinities), datetimes are naive UTC text."""

    unique_violation = sqlite3.IntegrityError

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    def statement(self, text: str) -> str:
        return re.sub(r"\$(\d+)", r"?\1", re.sub(r"::\w+", "", text))

    def ts(self, value: datetime | None) -> str | None:
        return _ts(value)

    def dt(self, value: Any) -> datetime | None:
        return _dt(value)

    def limit(self, n: int) -> int:
        return _limit(n)

    @_unavailable
    async def one(self, sql: str, args: Sequence[Any]) -> Any:
        return await self._pool.run(_statement(sql, args, _row), writes=_writes(sql))

    @_unavailable
    async def all(self, sql: str, args: Sequence[Any]) -> list[Any]:
        return await self._pool.run(_statement(sql, args, _rows), writes=_writes(sql))

    @_unavailable
    async def changes(self, sql: str, args: Sequence[Any]) -> int:
        return await self._pool.run(_statement(sql, args, _rowcount), writes=_writes(sql))

    @_unavailable
    async def each(
        self, statements: list[tuple[str, Sequence[Any]]], take: Callable[[sqlite3.Cursor], T]
    ) -> list[T | Exception]:
        """Several statements in one trip and one transaction; each one's result (`take`
        reads it from its cursor), or the error that undid it alone."""
        return await self._pool.run(_each_in_one_transaction(statements, take), writes=True)


def _written(outcomes: list[int | Exception]) -> list[bool | Exception]:
    """Row counts of single-row writes as "written or not", errors as they are."""
    return [o if isinstance(o, Exception) else o == 1 for o in outcomes]


class _Jobs(sqlrepo.CoalescedJobs):
    """A batch of concurrent creates is one trip to a pool thread and one commit, each
    insert still its own statement, in arrival order, so each cap counts the rows before
    it. So are the worker's concurrent takes and completions: a commit and a thread hop
    per statement were most of a job's SQLite work, and running each call's own statement
    in arrival order keeps every outcome as if alone (a job's second call in a batch sees
    its first one's write). On PostgreSQL the same batching found nothing to batch (a
    statement returns before the next one comes) and is not used."""

    def __init__(self, driver: sqlrepo.Driver, statements: dict[str, str]) -> None:
        super().__init__(driver, statements)
        self.takes: Coalescer[tuple[Any, ...], Any] = Coalescer(
            self._take_batch, concurrency=self.FLUSHES, max_batch=self.BATCH
        )
        self.completions: Coalescer[tuple[Any, ...], bool] = Coalescer(
            self._complete_batch, concurrency=self.FLUSHES, max_batch=self.BATCH
        )

    async def _each(
        self, statements: list[tuple[str, Sequence[Any]]], take: Callable[[sqlite3.Cursor], T]
    ) -> list[T | Exception]:
        return await cast(_Driver, self._db).each(statements, take)

    async def _take(self, args: tuple[Any, ...]) -> Any:
        return await self.takes.submit(args)

    async def _take_batch(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        if len(calls) == 1:
            return [await super()._take(calls[0])]
        sql = self._sql["job_take"]
        return await self._each([(sql, args) for args in calls], _row)

    async def _complete(self, args: tuple[Any, ...]) -> bool:
        return await self.completions.submit(args)

    async def _complete_batch(self, calls: list[tuple[Any, ...]]) -> list[bool | Exception]:
        if len(calls) == 1:
            return [await super()._complete(calls[0])]
        sql = self._sql["job_complete"]
        return _written(await self._each([(sql, args) for args in calls], _rowcount))

    async def _insert_many(self, rows: list[tuple[tuple[Any, ...], int]]) -> list[bool | Exception]:
        statements: list[tuple[str, Sequence[Any]]] = [
            (self._sql["job_insert"], values)
            if cap <= 0
            else (self._sql["job_insert_under_cap"], (*values, cap))
            for values, cap in rows
        ]
        return _written(await self._each(statements, _rowcount))


# --- the store --------------------------------------------------------------------------
class SqliteStore(sqlrepo.DirectStore):
    """`Store` on sqlite3."""

    name = "sqlite"
    jobs_repository = _Jobs

    def __init__(self, url: str | URL, *, timeout: float = 5.0, pool_size: int = 15) -> None:
        super().__init__(url, timeout=timeout)
        self.path = os.path.abspath(self.url.database or "")
        self._pool = _Pool(self.path, size=pool_size, timeout=timeout)
        self._serve(_Driver(self._pool))

    async def ping(self) -> None:
        try:
            await self._pool.run(_statement("SELECT 1", (), _row), writes=False)
        except Exception as error:
            if _is_unavailable(error):
                raise StoreUnavailable("SQLite does not answer") from error
            raise

    async def close(self) -> None:
        await self._pool.close()
