"""asyncio's `Queue` and `Event` at a tenth of their size, for objects held per connection.

An empty `collections.deque` takes 760 bytes (it allocates its first 64-slot block at
once); an `asyncio.Queue` holds three (items, waiting getters, waiting putters) and an
`Event` of its own with a fourth, 3.3 KB in all before anything is queued. A server holding
10,000 idle websockets keeps two queues and an event for each (uvicorn's and Engine.IO's),
nearly 8 KB per connection of empty deques. The subclasses here are the stdlib classes,
behaviour and all, with those deques swapped for a list that answers to the few deque
methods they call (`append`, `popleft`, `remove`, `len`, iteration): 56 bytes empty. A
list's `popleft` moves the items behind it, which costs nothing at the lengths a
connection's queue has.

`compatible()` says whether this Python's asyncio still keeps those deques where these
classes look for them; when it does not, `queue()` and `event()` hand out the stock ones.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class _Waiters(list[Any]):
    """A list with the deque methods asyncio's Queue and Event use on their deques."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class CompactEvent(asyncio.Event):
    """`asyncio.Event` whose waiters are kept in a list."""

    def __init__(self) -> None:
        super().__init__()
        state: Any = self  # asyncio's private attribute (see compatible())
        state._waiters = _Waiters()


class CompactQueue(asyncio.Queue[Any]):
    """`asyncio.Queue` (FIFO) whose items and waiters are kept in lists."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        state: Any = self  # asyncio's private attributes (see compatible())
        state._getters = _Waiters()
        state._putters = _Waiters()
        finished = CompactEvent()
        if state._finished.is_set():
            finished.set()
        state._finished = finished

    def _init(self, maxsize: int) -> None:
        state: Any = self
        state._queue = _Waiters()


def compatible() -> bool:
    """True when asyncio's Queue and Event keep deques under the names replaced above."""
    try:
        queue: Any = asyncio.Queue()
        event: Any = asyncio.Event()
        return (
            all(
                isinstance(getattr(queue, name, None), collections.deque)
                for name in ("_getters", "_putters", "_queue")
            )
            and isinstance(getattr(queue, "_finished", None), asyncio.Event)
            and isinstance(getattr(event, "_waiters", None), collections.deque)
        )
    except Exception:  # pragma: no cover - a future asyncio
        return False


COMPATIBLE = compatible()


def queue(compact: bool = True) -> asyncio.Queue[Any]:
    """A new FIFO queue: compact when asked and this Python allows, else the stock one."""
    return CompactQueue() if compact and COMPATIBLE else asyncio.Queue()


def event(compact: bool = True) -> asyncio.Event:
    """A new event: compact when asked and this Python allows, else the stock one."""
    return CompactEvent() if compact and COMPATIBLE else asyncio.Event()
