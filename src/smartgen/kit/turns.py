"""First come, first served turns: a fair alternative to `asyncio.Semaphore`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Protocol


class Limiter(Protocol):
    """At most N holders at once; `acquire` raises `TimeoutError` past its timeout."""

    async def acquire(self) -> None: ...

    def release(self) -> None: ...


class Turns:
    """At most `size` holders at once, served in the order they asked; a wait longer than
    `timeout` raises `TimeoutError`.

    `asyncio.Semaphore` (and pools built on an `asyncio.Queue`, as asyncpg's is) let a
    newcomer take a released slot before a woken waiter runs, and a waiter that loses that
    race goes back to the end of the line. Here a released turn goes straight to the
    longest waiter, and a newcomer never overtakes a waiter. A turn that is free when asked
    for costs no timer and no future."""

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
                turn.cancel()
                # `release` may already have taken this cancelled turn out of the line.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(turn)
            raise

    def release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the turn passes on; `_free` stays as it is
                return
        self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class SemaphoreLimiter:
    """`asyncio.Semaphore` with a timeout on `acquire`: the stock alternative to `Turns`."""

    def __init__(self, size: int, timeout: float) -> None:
        self._semaphore = asyncio.Semaphore(size)
        self._timeout = timeout

    async def acquire(self) -> None:
        async with asyncio.timeout(self._timeout):
            await self._semaphore.acquire()

    def release(self) -> None:
        self._semaphore.release()
