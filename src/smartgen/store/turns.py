"""First come, first served for a store's connections."""

from __future__ import annotations

import asyncio
from collections import deque


class Turns:
    """At most `size` holders at once, served in the order they asked; a wait longer than
    `timeout` raises `TimeoutError` (the stores answer it with `StoreUnavailable`).

    Pools built on an `asyncio.Queue` (asyncpg's, SQLAlchemy's async pool) hand a released
    connection to whoever asks next, and a woken waiter that loses that race goes back to
    the end of the line: with 64 requests in flight on 15 connections, some waited 5-10
    times the median. Here a released turn goes straight to the longest waiter, and a
    newcomer never overtakes a waiter. A turn that is free when asked for costs no timer
    and no future (`asyncio.Semaphore` scans its waiters and `asyncio.timeout` schedules a
    timer on every acquire: a few percent of a worker's CPU per job)."""

    def __init__(self, size: int, timeout: float) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._free = size
        self._timeout = timeout
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            # asyncio.timeout, not wait_for: no task per wait.
            async with asyncio.timeout(self._timeout):
                await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.release()  # handed a turn while leaving (timeout or cancel): pass it on
            else:
                turn.cancel()  # still in line (only `release` takes waiters out)
                self._waiters.remove(turn)
            raise

    def release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the turn passes on; `_free` stays as it is
                return
        self._free += 1

    def locked(self) -> bool:
        """Whether every turn is taken."""
        return self._free == 0

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
