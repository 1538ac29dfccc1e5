"""PyMongo's asyncio send and receive, without a task per step (`MONGO_LEAN_IO`).

Every operation of PyMongo's asyncio client sends a message and reads its reply through
two functions of `pymongo.network_layer`. `async_sendall` runs the write in a task of its
own (`asyncio.wait_for`), though the write never waits (it hands the bytes to the
transport); `async_receive_message` starts two tasks, the read and a loop that looks every
half second whether the connection's operation was cancelled (a pool cleared with
`interruptInUseConnections`, a connection closed), waits for the first with
`asyncio.wait`, then cancels and waits for the other. Three tasks and two waits per
operation: about 25 µs of CPU of a `find_one`'s 209 on the bench machine
(`bench/mongo_io.py`, bench/HISTORY.md, eleventh round).

Here the send and the read run in the caller's task, and a timer does what the extra
tasks did: every half second it looks at the cancellation, and at the deadline (the
socket timeout or the operation's `timeout`) it stops the read. A step with a deadline
has a timer of its own; the others share one per event loop, which runs only while some
step waits. The step then fails as PyMongo's own does (`TimeoutError("timed out")` or
`_OperationCancelled`), which PyMongo turns into the same errors. A cancellation from
elsewhere (the caller's own timeout, a shutdown) is passed on as it is.

The functions are the ones PyMongo's connection calls (`pymongo.asynchronous.pool`'s
names), swapped for the whole process by `lean_io(True)` (`MongoStore` calls it) and put
back by `lean_io(False)`. A PyMongo whose parts differ from the ones this is written
against is left alone (`lean_io` answers False).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import weakref
from typing import Any, ClassVar

log = logging.getLogger(__name__)

try:
    import pymongo.asynchronous.pool as _pool
    from pymongo import _csot
    from pymongo.errors import _OperationCancelled
    from pymongo.message import _UNPACK_REPLY
    from pymongo.network_layer import PyMongoProtocol, async_receive_message, async_sendall

    _STOCK: tuple[Any, Any] | None = (async_sendall, async_receive_message)
except ImportError:  # pragma: no cover - a PyMongo laid out otherwise: left alone
    _STOCK = None

POLL_SECONDS = 0.5  # as PyMongo's own look at the cancellation


class _Watch:
    """Over one step of the calling task: cancels the task at `deadline` (monotonic
    seconds, or None) or once `cancelled()` says so, looked at every POLL_SECONDS, and
    says which of the two it was. A step with a deadline has a timer of its own; the
    steps without one (the usual case: no socket timeout) are looked at together by
    their loop's one `_Rounds` timer, which runs only while some step waits."""

    __slots__ = ("_cancelled", "_deadline", "_handle", "_loop", "_rounds", "_task", "reason")

    def __init__(self, deadline: float | None, cancelled: Any) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._deadline = deadline
        self._cancelled = cancelled
        self.reason: str | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._rounds: _Rounds | None = None
        if deadline is None:
            self._rounds = _Rounds.of(loop)
            self._rounds.add(self)
        else:
            self._handle = loop.call_later(self._delay(), self.look)

    def _delay(self) -> float:
        assert self._deadline is not None
        return max(0.0, min(POLL_SECONDS, self._deadline - time.monotonic()))

    def look(self) -> None:
        if self._cancelled is not None and self._cancelled():
            self.reason = "cancelled"
        elif self._deadline is not None and time.monotonic() >= self._deadline:
            self.reason = "timeout"
        else:
            if self._deadline is not None:
                self._handle = self._loop.call_later(self._delay(), self.look)
            return
        if self._rounds is not None:
            self._rounds.discard(self)
        if self._task is not None:
            self._task.cancel()

    def ours(self) -> bool:
        """After a CancelledError: whether this watch stopped the step, and nothing else
        cancelled the task as well (then the cancellation is passed on)."""
        return self.reason is not None and self._task is not None and self._task.uncancel() == 0

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._rounds is not None:
            self._rounds.discard(self)


class _Rounds:
    """One loop's watches without a deadline, looked at every POLL_SECONDS by one timer
    that stops when none is left."""

    _of: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Rounds]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watches: set[_Watch] = set()
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Rounds:
        found = cls._of.get(loop)
        if found is None:
            found = cls._of[loop] = cls(loop)
        return found

    def add(self, watch: _Watch) -> None:
        self._watches.add(watch)
        if self._handle is None:
            self._handle = self._loop.call_later(POLL_SECONDS, self._round)

    def discard(self, watch: _Watch) -> None:
        self._watches.discard(watch)

    def _round(self) -> None:
        for watch in list(self._watches):
            watch.look()
        self._handle = self._loop.call_later(POLL_SECONDS, self._round) if self._watches else None


async def sendall(conn: PyMongoProtocol, buf: bytes) -> None:
    """`async_sendall`: the write within the socket timeout, in the caller's task."""
    timeout = conn.gettimeout
    if timeout is None:
        await conn.write(buf)
        return
    watch = _Watch(time.monotonic() + timeout, None)
    try:
        await conn.write(buf)
    except asyncio.CancelledError:
        if watch.ours():
            raise TimeoutError("timed out") from None
        raise
    finally:
        watch.stop()


async def receive_message(conn: Any, request_id: int | None, max_message_size: int) -> Any:
    """`async_receive_message`: one reply, within the operation's deadline, stopped when
    the connection's operation is cancelled."""
    timeout = conn.conn.gettimeout
    if _csot.get_timeout():
        deadline: float | None = _csot.get_deadline()
    elif timeout:
        deadline = time.monotonic() + timeout
    else:
        deadline = None
    context = conn.cancel_context
    if context.cancelled:
        raise _OperationCancelled("operation cancelled")
    watch = _Watch(deadline, lambda: context.cancelled)
    try:
        data, op_code = await conn.conn.get_conn.read(request_id, max_message_size)
    except asyncio.CancelledError:
        if not watch.ours():
            raise
        if watch.reason == "timeout":
            raise TimeoutError("timed out") from None
        raise _OperationCancelled("operation cancelled") from None
    finally:
        watch.stop()
    try:
        unpack_reply = _UNPACK_REPLY[op_code]
    except KeyError:
        from pymongo.errors import ProtocolError

        raise ProtocolError(
            f"Got opcode {op_code!r} but expected {_UNPACK_REPLY.keys()!r}"
        ) from None
    return unpack_reply(data)


def _fits() -> bool:
    """Whether this PyMongo is laid out as the functions above expect."""
    if _STOCK is None:
        return False
    stock_send, stock_receive = _STOCK
    try:
        read = inspect.signature(PyMongoProtocol.read).parameters
        write = inspect.signature(PyMongoProtocol.write).parameters
        receive = inspect.signature(stock_receive).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return (
        list(read) == ["self", "request_id", "max_message_size"]
        and list(write) == ["self", "message"]
        and list(receive) == ["conn", "request_id", "max_message_size"]
        and getattr(_pool, "async_receive_message", None) in (stock_receive, receive_message)
        and getattr(_pool, "async_sendall", None) in (stock_send, sendall)
    )


def lean_io(on: bool) -> bool:
    """Every asyncio PyMongo connection of the process sends and receives through the
    functions above (`on`) or through PyMongo's own; whether the lean ones are in use."""
    if not _fits():
        if on:
            log.info("MONGO_LEAN_IO: this PyMongo is laid out otherwise; its own I/O is used")
        return False
    assert _STOCK is not None
    stock_send, stock_receive = _STOCK
    setattr(_pool, "async_sendall", sendall if on else stock_send)  # noqa: B010 - not exported
    setattr(_pool, "async_receive_message", receive_message if on else stock_receive)  # noqa: B010
    return on
