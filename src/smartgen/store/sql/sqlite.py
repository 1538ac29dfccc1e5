"""SQLite store on the standard library's `sqlite3`: the embedded default.

The repositories and their statements are `repository.py`'s (shared with the PostgreSQL
store); this module runs them on sqlite3. Each call runs its whole statement (execute,
fetch, close) in one trip to a small thread pool, on a connection of its own. SQLite's own
waits (another process holding the write lock, up to `busy_timeout`) block a pool thread,
never the event loop.

Datetimes are stored as naive UTC text (`2026-01-11 19:34:18.356000`), which compares
correctly as a string; they come back as aware UTC. `usage` is JSON text.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from smartgen.errors import StoreUnavailable
from smartgen.kit.times import to_ms
from smartgen.store.sql import repository, schema
from smartgen.store.sql.sqlite_pool import (
    SqlitePool,
    each_in_one_transaction,
    row,
    rowcount,
    rows,
    statement,
    writes,
)
from smartgen.store.sql.url import SqlUrl
from smartgen.store.unavailable import NoConnection, translate_unavailable

T = TypeVar("T")


def _is_unavailable(error: BaseException) -> bool:
    # OperationalError: locked past busy_timeout, cannot open the file, disk I/O errors.
    return isinstance(error, NoConnection | sqlite3.OperationalError | OSError | TimeoutError)


_unavailable = translate_unavailable(_is_unavailable)


def _ts(value: datetime | None) -> str | None:
    """Naive UTC text, truncated to milliseconds."""
    if value is None:
        return None
    return to_ms(value).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- the driver -----------------------------------------------------------------------
class _Driver:
    """`repository.Driver` on the pool: `$n` parameters become `?n`, casts go (SQLite's
    types are affinities), datetimes are naive UTC text."""

    unique_violation = sqlite3.IntegrityError
    no_limit = -1

    def __init__(self, pool: SqlitePool) -> None:
        self._pool = pool

    def statement(self, text: str) -> str:
        return re.sub(r"\$(\d+)", r"?\1", re.sub(r"::\w+", "", text))

    def ts(self, value: datetime | None) -> str | None:
        return _ts(value)

    def dt(self, value: Any) -> datetime | None:
        return _dt(value)

    @_unavailable
    async def one(self, sql: str, args: Sequence[Any]) -> Any:
        return await self._pool.run(statement(sql, args, row), writes=writes(sql))

    @_unavailable
    async def all(self, sql: str, args: Sequence[Any]) -> list[Any]:
        return await self._pool.run(statement(sql, args, rows), writes=writes(sql))

    @_unavailable
    async def changes(self, sql: str, args: Sequence[Any]) -> int:
        return await self._pool.run(statement(sql, args, rowcount), writes=writes(sql))

    @_unavailable
    async def each(
        self, statements: list[tuple[str, Sequence[Any]]], take: Callable[[sqlite3.Cursor], T]
    ) -> list[T | Exception]:
        """Several statements in one trip and one transaction; each one's result (`take`
        reads it from its cursor), or the error that undid it alone."""
        return await self._pool.run(each_in_one_transaction(statements, take), writes=True)


def _written(outcomes: list[int | Exception]) -> list[bool | Exception]:
    """Row counts of single-row writes as "written or not", errors as they are."""
    return [o if isinstance(o, Exception) else o == 1 for o in outcomes]


class _Jobs(repository.CoalescedJobs):
    """A batch of concurrent creates, takes or completions is one trip to a pool thread
    and one commit, each call still its own statement, in arrival order, so each outcome
    is as if alone (a cap counts the rows before it; a job's second call in a batch sees
    its first one's write): a commit and a thread hop per statement were most of a job's
    SQLite work."""

    async def _each(
        self, statements: list[tuple[str, Sequence[Any]]], take: Callable[[sqlite3.Cursor], T]
    ) -> list[T | Exception]:
        return await cast(_Driver, self._db).each(statements, take)

    async def _take_many(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        sql = self._sql["job_take"]
        return await self._each([(sql, args) for args in calls], row)

    async def _complete_many(self, calls: list[tuple[Any, ...]]) -> list[bool | Exception]:
        sql = self._sql["job_complete"]
        return _written(await self._each([(sql, args) for args in calls], rowcount))

    async def _insert_many(self, rows: list[tuple[tuple[Any, ...], int]]) -> list[bool | Exception]:
        statements: list[tuple[str, Sequence[Any]]] = [
            (self._sql["job_insert"], values)
            if cap <= 0
            else (self._sql["job_insert_under_cap"], (*values, cap))
            for values, cap in rows
        ]
        return _written(await self._each(statements, rowcount))


# --- the store --------------------------------------------------------------------------
class SqliteStore(repository.SqlStore):
    """`Store` on sqlite3."""

    name = "sqlite"
    dialect = "sqlite"
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
        self.path = self.url.target
        self._pool = SqlitePool(self.path, size=pool_size, timeout=timeout, fair=fair_pool)
        self._serve(_Driver(self._pool))

    async def init(self) -> None:
        """Create the directory and the file, switch it to WAL, and create or upgrade the
        schema (idempotent, safe to run from several processes)."""
        directory = os.path.dirname(self.path)
        try:
            await asyncio.to_thread(os.makedirs, directory, exist_ok=True)
        except OSError as error:
            raise StoreUnavailable(
                f"Cannot create the directory {directory!r} for the SQLite database: "
                f"{error.strerror or error}"
            ) from error
        try:
            await self._pool.run(_migrate, writes=True)
        except (sqlite3.Error, OSError) as error:
            raise StoreUnavailable(
                f"Cannot open the {self.description} database: {type(error).__name__}: {error}"
            ) from error

    async def ping(self) -> None:
        try:
            await self._pool.run(statement("SELECT 1", (), row), writes=False)
        except Exception as error:
            if _is_unavailable(error):
                raise StoreUnavailable("SQLite does not answer") from error
            raise

    async def close(self) -> None:
        await self._pool.close()


def _migrate(conn: sqlite3.Connection) -> None:
    """Work for a pool thread: WAL, then the schema under the file's write lock."""
    # WAL is a property of the file, set once here. Switching to it can answer "database is
    # locked" at once (without waiting on busy_timeout) while another process opens the
    # same new file, so retry for a bounded time.
    for attempt in range(100):
        try:
            conn.execute("PRAGMA journal_mode = WAL").close()
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == 99:
                raise
            time.sleep(0.05)
    conn.execute("BEGIN IMMEDIATE")
    try:
        exists = conn.execute(schema.VERSION_TABLE_EXISTS["sqlite"]).fetchone()
        row = conn.execute(schema.CURRENT_VERSION).fetchone() if exists else None
        for statement in schema.migration("sqlite", row[0] if row else None):
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
