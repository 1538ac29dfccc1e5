"""The SQLite store's connections: a few sqlite3 connections to one file, each used by one
pool thread at a time, and the work a call sends to a thread (one statement, or several in
one transaction)."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from smartgen.store.sql.fair_pool import limiter
from smartgen.store.unavailable import NoConnection

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000


class SqlitePool:
    """Up to `size` connections to one file and as many threads (`fair_pool.limiter`).
    Writes also take this process's one write turn first: SQLite lets one writer in at a
    time, and a writer that finds the file locked waits in SQLite's busy handler, which
    sleeps 1, 2, 5, 10 … 100 ms between tries whatever the lock's holder does. Two of this
    process's writes never meet there; they queue here, and the next one starts the moment
    the last one ends. (Another process's writer — the worker's, or another API
    process's — still meets them in the busy handler.)"""

    def __init__(self, path: str, *, size: int, timeout: float, fair: bool) -> None:
        self._path = path
        self._turns = limiter(size, timeout, fair=fair)
        self._write_turn = limiter(1, timeout, fair=fair)
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
                raise NoConnection("the write turn did not come in time") from error
        try:
            await self._turns.acquire()
        except BaseException as error:
            if writes:
                self._write_turn.release()
            if isinstance(error, TimeoutError):
                raise NoConnection("no database connection came free in time") from error
            raise
        conn = self._idle.pop() if self._idle else None

        def call() -> Outcome[T]:
            # Never raises: the connection must come back to the pool whatever happened.
            try:
                opened = conn or self._open()
            except BaseException as error:
                return Outcome(None, None, error)
            try:
                return Outcome(opened, work(opened), None)
            except BaseException as error:
                return Outcome(opened, None, error)

        try:
            if self._closed:
                raise NoConnection("the store is closed")
            job = self._threads.submit(call)
        except BaseException:
            self._give_back(Outcome(conn, None, None), writes)
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

    def _give_back(self, outcome: Outcome[Any], writes: bool) -> None:
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
class Outcome(Generic[T]):
    connection: sqlite3.Connection | None
    result: T | None
    error: BaseException | None


def statement(
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


def each_in_one_transaction(
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
def writes(sql: str) -> bool:
    """Whether a statement writes (the repositories' statements are a fixed set)."""
    return sql.lstrip().split(None, 1)[0].upper() != "SELECT"


def rows(cursor: sqlite3.Cursor) -> list[Any]:
    return cursor.fetchall()


def row(cursor: sqlite3.Cursor) -> Any:
    return cursor.fetchone()


def rowcount(cursor: sqlite3.Cursor) -> int:
    return int(cursor.rowcount)
