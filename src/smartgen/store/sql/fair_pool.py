"""First come, first served database connections (`DB_FAIR_POOL`, on by default).

Replaces asyncpg's `Pool` for PostgreSQL, and `asyncio.Semaphore` for the SQLite store's
connection and write limits. Both library versions let a newcomer take a released
connection before a woken waiter runs, and the waiter that loses goes to the back of the
line, so under load a few requests wait many times the median; here a released
connection (or turn) goes to the longest waiter (`kit.turns.Turns`). The PostgreSQL pool
also skips asyncpg's per-checkout bookkeeping (a proxy object, an inactivity timer, a reset
hook). `DB_FAIR_POOL=false` uses the libraries' own; the store contract suite runs both.
What each wins is in the README's Design section and `bench/HISTORY.md`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

import asyncpg

from smartgen.kit.turns import Limiter, SemaphoreLimiter, Turns
from smartgen.store.unavailable import NoConnection

IDLE_LIFETIME_SECONDS = 300.0  # an idle connection older than this is closed
# Whether a connection that met this error (None: none) may be used again.
ReusableCheck = Callable[[BaseException | None], bool]


def limiter(size: int, timeout: float, *, fair: bool) -> Limiter:
    """`Turns` when fair, else an `asyncio.Semaphore` (with the same timeout)."""
    return Turns(size, timeout) if fair else SemaphoreLimiter(size, timeout)


class FairPool:
    """Up to `size` asyncpg connections, opened on demand (a store is built before anything
    connects) and handed out in turn. Idle connections sit on a stack (the most recently
    used first, so a burst's extra connections age out at the bottom)."""

    def __init__(
        self,
        dsn: str,
        *,
        size: int,
        timeout: float,
        connect_options: dict[str, object],
        reusable: ReusableCheck,
    ) -> None:
        self._dsn = dsn
        self._reusable = reusable
        self._timeout = timeout
        self._options = connect_options
        self._turns = Turns(size, timeout)
        self._idle: list[tuple[asyncpg.Connection, float]] = []  # (connection, idle since)
        self._closed = False

    async def _acquire(self) -> asyncpg.Connection:
        try:
            await self._turns.acquire()
        except TimeoutError as error:
            raise NoConnection("no database connection came free in time") from error
        try:
            return await self._take()
        except BaseException as error:
            self._turns.release()
            if isinstance(
                error, OSError | TimeoutError | asyncpg.PostgresError | asyncpg.InterfaceError
            ):
                raise NoConnection(f"no database connection: {error}") from error
            raise

    async def _take(self) -> asyncpg.Connection:
        if self._closed:
            raise NoConnection("the store is closed")
        while self._idle:
            conn, _ = self._idle.pop()
            if not conn.is_closed():  # the server may have dropped it while idle
                return conn
        return await asyncpg.connect(self._dsn, timeout=self._timeout, **self._options)

    def _release(self, conn: asyncpg.Connection, *, reusable: bool) -> None:
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
        """`async with`: one connection; failing to get one is `NoConnection`. One that
        met an error goes back to the pool only if `reusable(error)` says so."""
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
    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: FairPool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._pool._acquire()
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            self._pool._release(self._conn, reusable=self._pool._reusable(exc))
            self._conn = None
