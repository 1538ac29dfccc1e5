"""The group-commit coalescer (batching.py): batches form only while flushes are busy, every
caller gets its own outcome, failures reach the whole batch, cancellation is safe."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from smartgen.kit.batching import Coalescer


class Recorder:
    """A flush that records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, items: list[int]) -> Sequence[int | Exception]:
        self.batches.append(list(items))
        self.entered.set()
        await self.gate.wait()
        return [i * 10 if i >= 0 else ValueError(f"negative: {i}") for i in items]


async def test_an_idle_coalescer_flushes_each_call_at_once() -> None:
    flush = Recorder()
    c: Coalescer[int, int] = Coalescer(flush, concurrency=2)
    assert await c.submit(1) == 10
    assert await c.submit(2) == 20
    assert flush.batches == [[1], [2]]


async def test_a_call_going_alone_runs_in_its_callers_task() -> None:
    """Without spacing each of a caller's sequential calls goes alone, at once, in its
    own task (no batch task, no timer)."""
    seen: list[asyncio.Task[object] | None] = []

    async def flush(items: list[int]) -> list[int | Exception]:
        seen.append(asyncio.current_task())
        return list(items)

    c: Coalescer[int, int] = Coalescer(flush)
    assert await c.submit(5) == 5
    assert seen == [asyncio.current_task()]
    assert [await c.submit(i) for i in range(5)] == list(range(5))
    assert seen == [asyncio.current_task()] * 6


async def test_calls_made_while_flushes_are_busy_go_out_together_in_order() -> None:
    flush = Recorder()
    flush.gate.clear()
    c: Coalescer[int, int] = Coalescer(flush, concurrency=1, max_batch=4)
    first = asyncio.create_task(c.submit(0))
    await flush.entered.wait()
    rest = [asyncio.create_task(c.submit(i)) for i in range(1, 7)]
    await asyncio.sleep(0)
    flush.gate.set()
    assert await first == 0
    assert [await t for t in rest] == [10, 20, 30, 40, 50, 60]
    # The first alone, then at most max_batch at a time, in arrival order.
    assert flush.batches == [[0], [1, 2, 3, 4], [5, 6]]
    assert (c.flushes, c.items) == (3, 7)


async def test_each_caller_gets_its_own_outcome() -> None:
    flush = Recorder()
    flush.gate.clear()
    c: Coalescer[int, int] = Coalescer(flush, concurrency=1)
    blocker = asyncio.create_task(c.submit(0))
    await flush.entered.wait()
    good = asyncio.create_task(c.submit(3))
    bad = asyncio.create_task(c.submit(-1))
    await asyncio.sleep(0)
    flush.gate.set()
    await blocker
    assert await good == 30
    with pytest.raises(ValueError, match="negative: -1"):
        await bad
    assert flush.batches[-1] == [3, -1]


async def test_a_failed_flush_fails_every_caller_of_its_batch_only() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 2:
            raise ConnectionError("down")
        return items

    c: Coalescer[int, int] = Coalescer(flaky, concurrency=1)
    results = await asyncio.gather(*(c.submit(i) for i in range(5)), return_exceptions=True)
    # Flush 1 took [0]; flush 2 took [1..4] and failed for all of them.
    assert results[0] == 0
    assert all(isinstance(r, ConnectionError) for r in results[1:])
    assert await c.submit(9) == 9  # the next flush works again


async def test_a_flush_answering_the_wrong_number_of_outcomes_is_an_error() -> None:
    async def short(items: list[int]) -> list[int | Exception]:
        return items[:-1]

    c: Coalescer[int, int] = Coalescer(short)
    with pytest.raises(RuntimeError, match="1 items"):
        await c.submit(1)


async def test_a_caller_cancelled_before_its_flush_withdraws_its_item() -> None:
    flush = Recorder()
    flush.gate.clear()
    c: Coalescer[int, int] = Coalescer(flush, concurrency=1)
    blocker = asyncio.create_task(c.submit(0))
    await flush.entered.wait()
    withdrawn = asyncio.create_task(c.submit(1))
    kept = asyncio.create_task(c.submit(2))
    await asyncio.sleep(0)
    withdrawn.cancel()
    await asyncio.sleep(0)
    flush.gate.set()
    assert await blocker == 0
    assert await kept == 20
    with pytest.raises(asyncio.CancelledError):
        await withdrawn
    assert flush.batches == [[0], [2]]


async def test_a_caller_cancelled_during_its_flush_leaves_the_batch_alone() -> None:
    gates: dict[int, asyncio.Event] = {0: asyncio.Event(), 1: asyncio.Event()}
    finished: list[list[int]] = []

    async def gated(items: list[int]) -> list[int | Exception]:
        await gates[items[0]].wait()
        finished.append(items)
        return [i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(gated, concurrency=1)
    blocker = asyncio.create_task(c.submit(0))  # goes alone, holds the only flush
    await asyncio.sleep(0)
    a = asyncio.create_task(c.submit(1))
    b = asyncio.create_task(c.submit(2))
    await asyncio.sleep(0)
    gates[0].set()
    assert await blocker == 0
    await asyncio.sleep(0)  # the batch [1, 2] is in flight now
    a.cancel()
    await asyncio.sleep(0)
    gates[1].set()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert await b == 20
    assert finished == [[0], [1, 2]]  # the batch ran to its end for b


async def test_drain_waits_for_pending_and_running_flushes() -> None:
    flush = Recorder()
    flush.gate.clear()
    c: Coalescer[int, int] = Coalescer(flush, concurrency=1)
    tasks = [asyncio.create_task(c.submit(i)) for i in range(3)]
    await flush.entered.wait()
    drained = asyncio.create_task(c.drain())
    await asyncio.sleep(0.01)
    assert not drained.done()
    flush.gate.set()
    await asyncio.wait_for(drained, 2)
    assert all(t.done() for t in tasks)
    assert [t.result() for t in tasks] == [0, 10, 20]


async def test_a_busy_coalescer_with_spacing_starts_at_most_one_flush_per_spacing() -> None:
    """A call made within `spacing` of the last flush's start waits for the rest of it,
    and every call made meanwhile goes out with it; a call after a quiet spell goes at
    once, in its caller's own task (no timer, no batch task)."""
    starts: list[tuple[float, list[int], asyncio.Task[object] | None]] = []
    loop = asyncio.get_running_loop()

    async def flush(items: list[int]) -> list[int | Exception]:
        starts.append((loop.time(), list(items), asyncio.current_task()))
        return list(items)

    me = asyncio.current_task()
    c: Coalescer[int, int] = Coalescer(flush, spacing=0.1)
    assert await c.submit(1) == 1
    assert starts[0][2] is me  # idle: at once, alone
    # The flush is over, but its spacing is not: these wait for it, and go together.
    assert list(await asyncio.gather(c.submit(2), c.submit(3), c.submit(4))) == [2, 3, 4]
    assert [items for _, items, _ in starts] == [[1], [2, 3, 4]]
    assert starts[1][0] - starts[0][0] >= 0.1
    await asyncio.sleep(0.15)  # quiet for longer than the spacing: idle again
    assert await c.submit(5) == 5
    assert starts[2][1:] == ([5], me)


def test_bounds_are_checked() -> None:
    async def noop(items: list[int]) -> list[int | Exception]:
        return list(items)

    with pytest.raises(ValueError):
        Coalescer(noop, concurrency=0)
    with pytest.raises(ValueError):
        Coalescer(noop, max_batch=0)
    with pytest.raises(ValueError):
        Coalescer(noop, spacing=-0.001)
