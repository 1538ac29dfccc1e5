"""smartgen.store.turns.Turns: bounded, first come first served, timeouts and
cancellation never lose or duplicate a turn."""

from __future__ import annotations

import asyncio

import pytest

from smartgen.kit.turns import Turns

WAIT = 5.0  # bound for any wait; never a speed assertion


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def is_locked(turns: Turns) -> bool:
    """Whether every turn is taken: a newcomer gets none within a moment."""
    try:
        await asyncio.wait_for(turns.acquire(), 0.05)
    except TimeoutError:
        return True
    turns.release()
    return False


async def test_free_turns_are_taken_at_once_up_to_the_size() -> None:
    turns = Turns(2, timeout=WAIT)
    await turns.acquire()
    assert not await is_locked(turns)
    await turns.acquire()
    assert await is_locked(turns)
    turns.release()
    assert not await is_locked(turns)
    turns.release()
    with pytest.raises(ValueError):
        Turns(0, timeout=1)


async def test_waiters_are_served_in_the_order_they_asked() -> None:
    turns = Turns(1, timeout=WAIT)
    await turns.acquire()
    order: list[int] = []

    async def wait(n: int) -> None:
        async with turns:
            order.append(n)
            await asyncio.sleep(0)

    waiting = [asyncio.create_task(wait(n)) for n in range(5)]
    await settle()
    assert order == []
    turns.release()
    await asyncio.wait_for(asyncio.gather(*waiting), WAIT)
    assert order == [0, 1, 2, 3, 4]
    assert not await is_locked(turns)


async def test_a_newcomer_never_overtakes_a_waiter() -> None:
    turns = Turns(1, timeout=WAIT)
    await turns.acquire()
    order: list[str] = []

    async def take(name: str) -> None:
        await turns.acquire()
        order.append(name)

    waiter = asyncio.create_task(take("waiter"))
    await settle()
    turns.release()  # handed to the waiter, even before it runs
    newcomer = asyncio.create_task(take("newcomer"))
    await asyncio.wait_for(waiter, WAIT)
    await settle()
    assert order == ["waiter"]  # the newcomer waits for the waiter's release
    turns.release()
    await asyncio.wait_for(newcomer, WAIT)
    assert order == ["waiter", "newcomer"]
    turns.release()
    assert not await is_locked(turns)


async def test_a_wait_past_the_timeout_raises_and_takes_nothing() -> None:
    turns = Turns(1, timeout=0.05)
    await turns.acquire()
    with pytest.raises(TimeoutError):
        await turns.acquire()
    turns.release()
    await asyncio.wait_for(turns.acquire(), WAIT)  # the turn is there
    turns.release()
    assert not await is_locked(turns)


async def test_a_cancelled_waiter_leaves_the_line() -> None:
    turns = Turns(1, timeout=WAIT)
    await turns.acquire()
    gone = asyncio.create_task(turns.acquire())
    stays = asyncio.create_task(turns.acquire())
    await settle()
    gone.cancel()
    await settle()
    turns.release()
    await asyncio.wait_for(stays, WAIT)  # the turn went past the cancelled waiter
    assert gone.cancelled()
    turns.release()
    assert not await is_locked(turns)


async def test_a_turn_handed_to_a_waiter_cancelled_meanwhile_passes_on() -> None:
    turns = Turns(1, timeout=WAIT)
    await turns.acquire()
    first = asyncio.create_task(turns.acquire())
    second = asyncio.create_task(turns.acquire())
    await settle()
    turns.release()  # handed to `first`…
    first.cancel()  # …which is cancelled before it runs: the turn goes to `second`
    await asyncio.wait_for(second, WAIT)
    assert first.cancelled()
    turns.release()
    assert not await is_locked(turns)
    # Exactly one turn exists: taking it twice waits.
    await turns.acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await turns.acquire()
    turns.release()


async def test_a_waiter_cancelled_as_its_turn_is_released_leaves_cleanly() -> None:
    """The waiter's future is cancelled, then `release` takes it out of the line before the
    waiter runs again: the waiter ends cancelled (never another error, which a request
    would have turned into a 500), and the turn is free for the next caller."""
    turns = Turns(1, WAIT)
    await turns.acquire()
    waiter = asyncio.create_task(turns.acquire())
    await settle()
    waiter.cancel()  # cancels the future it awaits, at once
    turns.release()  # in the same turn of the loop: finds that future cancelled
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not await is_locked(turns)
    await turns.acquire()
    assert await is_locked(turns)
    turns.release()
