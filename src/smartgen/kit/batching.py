"""Group commit for concurrent calls: many callers, few round trips.

A `Coalescer` runs at most `concurrency` flushes at a time. A call made while that many are
running waits, and goes out together with every other waiting call in the next flush (up
to `max_batch` of them). An idle process therefore flushes each call at once and adds no
latency, while a busy one makes fewer, larger round trips: the database commits once for
a batch of jobs, Redis reads one pipeline instead of one script call per job.

The API uses it for the rate limiter's count, the job row and the queue add of each queued
job; every store also for the worker's takes and completions, and the webhook queue for
the change tokens read at each job's end.

One flush at a time is the default, and every use keeps it (none passes `concurrency`):
the calls made while a flush is out go together in the next. With two at a time, a busy
process almost always found the second one free, so most calls went alone, one round
trip each: on the seed's MongoDB store a worker's job cost a third more CPU, an API's
`POST` about 15 % more Python calls (`bench/peers.py`, bench/HISTORY.md, thirteenth
round). A call waits at most for the flush in front of it.

`spacing` makes a busy coalescer start at most one flush per that many seconds: a call
made sooner after the last flush began waits for the rest of the spacing, and the calls
made meanwhile go with it; a call after a quiet spell still goes at once. On a fast store
(PostgreSQL answers a take in a fraction of a millisecond) a flush is back before the next
job's call comes, so without spacing nearly every call went alone. The worker's per-job
round trips use `WORKER_SPACING` (5 ms: at most 5 ms more for a job's take, completion,
change token and events, against model calls of seconds): on PostgreSQL its CPU per job
fell by about a quarter (bench/HISTORY.md, fourteenth round). The API's keep none: on
the seed's store its CPU per job rose with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# A flush returns one outcome per item, in order: the item's result, or the exception its
# caller gets.
Flush = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]
# The spacing of the worker's per-job round trips (see the module's docstring).
WORKER_SPACING = 0.005


class Coalescer(Generic[T, R]):
    def __init__(
        self,
        flush: Flush[T, R],
        *,
        concurrency: int = 1,
        max_batch: int = 64,
        spacing: float = 0.0,
    ) -> None:
        if concurrency < 1 or max_batch < 1 or spacing < 0:
            raise ValueError("concurrency and max_batch must be at least 1, spacing not negative")
        self._flush = flush
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._spacing = spacing
        self._pending: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._active = 0  # flushes in progress: batch tasks and calls going alone
        self._last_start = -math.inf  # the event loop's time when the last flush began
        self._timer: asyncio.TimerHandle | None = None  # starts the next flush when due
        # Figures for tests and the bench: how many flushes, how many items.
        self.flushes = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """`item`'s outcome once its flush is done. A caller cancelled before its flush
        began withdraws its item; one cancelled later leaves the flush to finish (the
        others in the batch still need it)."""
        if (
            not self._pending
            and self._active < self._concurrency
            and (
                not self._spacing
                or asyncio.get_running_loop().time() >= self._last_start + self._spacing
            )
        ):
            return await self._alone(item)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        entry = (item, future)
        self._pending.append(entry)
        self._start_flushes()
        try:
            return await future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):  # ValueError: already taken by a flush
                self._pending.remove(entry)
            raise

    async def _alone(self, item: T) -> R:
        """Nothing waits and a flush is free: flush this item in the caller's own task (no
        task, no future: an idle process pays nothing for batching). Calls arriving
        meanwhile queue behind it as behind any flush."""
        self._active += 1
        self.flushes += 1
        self.items += 1
        if self._spacing:  # unspaced coalescers (the API's) skip the clock
            self._last_start = asyncio.get_running_loop().time()
        try:
            outcomes = await self._flush([item])
        finally:
            self._active -= 1
            self._start_flushes()
        if len(outcomes) != 1:
            raise RuntimeError(f"flush returned {len(outcomes)} outcomes for 1 items")
        outcome = outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _start_flushes(self) -> None:
        while self._pending and self._active < self._concurrency:
            if self._spacing:
                loop = asyncio.get_running_loop()
                now, due = loop.time(), self._last_start + self._spacing
                if now < due:  # busy: gather until the spacing is over
                    if self._timer is None:
                        self._timer = loop.call_at(due, self._timer_fired)
                    return
                self._last_start = now
            size = min(self._max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(size)]
            self._active += 1
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _timer_fired(self) -> None:
        self._timer = None
        self._start_flushes()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._active -= 1
        self._start_flushes()

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.flushes += 1
        self.items += len(batch)
        try:
            outcomes = await self._flush([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(
                    f"flush returned {len(outcomes)} outcomes for {len(batch)} items"
                )
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every caller in the batch hears of it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def drain(self) -> None:
        """Wait until nothing is pending or running (for shutdown)."""
        while self._active or self._pending:
            if self._running:
                await asyncio.wait(set(self._running))
            else:  # only calls going alone, which end by themselves
                await asyncio.sleep(0.01)
