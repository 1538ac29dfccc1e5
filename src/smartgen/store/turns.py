"""First come, first served for a store's connections."""

from __future__ import annotations

import asyncio


class Turns:
    """At most `size` holders at once, served in the order they asked; a wait longer than
    `timeout` raises `TimeoutError` (the stores answer it with `StoreUnavailable`).

    Pools built on an `asyncio.Queue` (asyncpg's, SQLAlchemy's async pool) hand a released
    connection to whoever asks next, and a woken waiter that loses that race goes back to
    the end of the line: with 64 requests in flight on 15 connections, some waited 5-10
    times the median. `asyncio.Semaphore` is FIFO; with callers queueing here, a pool
    behind it never has waiters."""

    def __init__(self, size: int, timeout: float) -> None:
        self._semaphore = asyncio.Semaphore(size)
        self._timeout = timeout

    async def acquire(self) -> None:
        # asyncio.timeout, not wait_for: no task per turn.
        async with asyncio.timeout(self._timeout):
            await self._semaphore.acquire()

    def release(self) -> None:
        self._semaphore.release()

    def locked(self) -> bool:
        """Whether every turn is taken."""
        return self._semaphore.locked()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
