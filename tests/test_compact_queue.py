"""kit/compact_queue.py against asyncio's own Queue and Event: every scenario runs on both
and must come out the same; and realtime/engineio_asgi.py's request translation against
python-engineio's stock one, on the same requests."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest
from engineio.async_drivers import asgi as stock_asgi

from smartgen.config import Settings
from smartgen.kit import compact_queue
from smartgen.kit.compact_queue import CompactEvent, CompactQueue
from smartgen.realtime import engineio_asgi
from smartgen.server.compact_websocket import CompactWebSocketProtocol
from smartgen.server.http import websocket_protocol
from smartgen.server.sticky import sticky_sio_class

QUEUES: dict[str, Callable[..., asyncio.Queue[Any]]] = {
    "stock": asyncio.Queue,
    "compact": CompactQueue,
}
EVENTS: dict[str, Callable[[], asyncio.Event]] = {"stock": asyncio.Event, "compact": CompactEvent}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_this_python_keeps_the_deques_the_compact_classes_replace() -> None:
    assert compact_queue.COMPATIBLE
    assert isinstance(compact_queue.queue(), CompactQueue)
    assert isinstance(compact_queue.event(), CompactEvent)
    assert type(compact_queue.queue(compact=False)) is asyncio.Queue
    assert type(compact_queue.event(compact=False)) is asyncio.Event


def test_an_empty_compact_queue_and_event_are_several_times_smaller() -> None:
    def size(obj: Any) -> int:
        parts = [obj, obj.__dict__, *obj.__dict__.values()]
        if isinstance(obj, asyncio.Queue):
            finished: Any = obj._finished  # type: ignore[attr-defined]
            parts += [finished.__dict__, *finished.__dict__.values()]
        return sum(sys.getsizeof(p) for p in parts)

    assert size(CompactQueue()) * 3 < size(asyncio.Queue())
    assert size(CompactEvent()) * 2 < size(asyncio.Event())


@pytest.mark.parametrize("kind", QUEUES)
async def test_queue_order_waiting_getters_and_nowait(kind: str) -> None:
    q = QUEUES[kind]()
    assert q.empty() and q.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    got: list[tuple[int, Any]] = []

    async def getter(n: int) -> None:
        got.append((n, await q.get()))

    tasks = [asyncio.create_task(getter(n)) for n in range(3)]
    await settle()
    assert got == []
    for item in ("a", "b", "c"):
        q.put_nowait(item)
    await asyncio.gather(*tasks)
    assert got == [(0, "a"), (1, "b"), (2, "c")]  # first come, first served
    for item in range(5):
        await q.put(item)
    assert q.qsize() == 5 and not q.empty()
    assert [q.get_nowait() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert "maxsize=0" in repr(q)


@pytest.mark.parametrize("kind", QUEUES)
async def test_a_cancelled_getter_loses_nothing(kind: str) -> None:
    q = QUEUES[kind]()
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await settle()
    first.cancel()
    q.put_nowait("x")
    await settle()
    assert first.cancelled()
    assert await asyncio.wait_for(second, 5) == "x"
    assert q.empty()


@pytest.mark.parametrize("kind", QUEUES)
async def test_join_waits_for_every_task_done(kind: str) -> None:
    q = QUEUES[kind]()
    await asyncio.wait_for(q.join(), 5)  # nothing queued: joins at once
    q.put_nowait(1)
    q.put_nowait(2)
    joined = asyncio.create_task(q.join())
    await settle()
    q.get_nowait()
    q.task_done()
    await settle()
    assert not joined.done()
    q.get_nowait()
    q.task_done()
    await asyncio.wait_for(joined, 5)
    with pytest.raises(ValueError):
        q.task_done()


@pytest.mark.parametrize("kind", QUEUES)
async def test_a_bounded_queue_makes_putters_wait(kind: str) -> None:
    q = QUEUES[kind](2)
    await q.put(1)
    await q.put(2)
    assert q.full()
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(3)
    putter = asyncio.create_task(q.put(3))
    await settle()
    assert not putter.done()
    assert await q.get() == 1
    await asyncio.wait_for(putter, 5)
    assert [q.get_nowait(), q.get_nowait()] == [2, 3]


@pytest.mark.parametrize("kind", EVENTS)
async def test_event_wakes_every_waiter_and_forgets_cancelled_ones(kind: str) -> None:
    event = EVENTS[kind]()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await settle()
    waiters[0].cancel()
    await settle()
    event.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters[1:]), 5) == [True, True]
    assert waiters[0].cancelled()
    assert await asyncio.wait_for(event.wait(), 5) is True  # set: returns at once
    event.clear()
    late = asyncio.create_task(event.wait())
    await settle()
    assert not late.done()
    event.set()
    assert await asyncio.wait_for(late, 5) is True


# --- Engine.IO's request translation ---------------------------------------------------------
def scope(kind: str, headers: list[tuple[bytes, bytes]], query: bytes = b"") -> dict[str, Any]:
    return {
        "type": kind,
        "path": "/socket.io/",
        "query_string": query,
        "headers": headers,
        **({"method": "POST"} if kind == "http" else {}),
    }


HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"authorization", b"Bearer abc"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"11"),
    (b"x-forwarded-proto", b"https"),
    (b"accept", b"a"),
    (b"accept", b"b"),  # repeated: joined with a comma
    (b"x-bad", b"\xff\xfe"),  # not UTF-8: skipped
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
]


def receiver(events: list[dict[str, Any]]) -> Callable[[], Any]:
    queue = list(events)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


@pytest.mark.parametrize(
    ("kind", "first", "query"),
    [
        ("websocket", {"type": "websocket.connect"}, b"EIO=4&transport=websocket&token=t"),
        ("http", {"type": "http.request", "body": b"hello", "more_body": False}, b"EIO=4"),
        ("http", {"type": "http.request", "body": b"hello"}, b"\xff"),
    ],
)
async def test_the_environ_is_the_stock_one(kind: str, first: dict[str, Any], query: bytes) -> None:
    async def send(message: Any) -> None:
        pass

    request = scope(kind, HEADERS, query)
    ours = await engineio_asgi.translate_request(request, receiver([first]), send)
    stock = await stock_asgi.translate_request(request, receiver([first]), send)
    assert ours.keys() == stock.keys()
    for key in stock:
        if key not in ("wsgi.input", "asgi.receive"):
            assert ours[key] == stock[key], key
    assert ours["HTTP_ACCEPT"] == "a,b" and ours["wsgi.url_scheme"] == "https"
    assert "HTTP_X_BAD" not in ours


async def test_the_environ_of_a_request_that_is_neither_is_empty() -> None:
    async def send(message: Any) -> None:
        pass

    request = scope("http", [])
    assert await engineio_asgi.translate_request(request, receiver([{"type": "x"}]), send) == {}


@pytest.mark.parametrize(
    "translate", [engineio_asgi.translate_request, stock_asgi.translate_request]
)
async def test_the_body_reads_the_same(translate: Any) -> None:
    async def send(message: Any) -> None:
        pass

    events = [
        {"type": "http.request", "body": b"hel", "more_body": True},
        {"type": "http.request", "body": b"lo ", "more_body": True},
        {"type": "http.request", "body": b"world", "more_body": False},
    ]
    environ = await translate(scope("http", []), receiver(events), send)
    assert await environ["wsgi.input"].read(4) == b"hell"
    # Both stop adding once `length` bytes are in and drop the rest of the body.
    assert await environ["wsgi.input"].read() == b"o "
    assert await environ["wsgi.input"].read() == b""
    # A websocket's environ has no body to read.
    ws = await translate(scope("websocket", []), receiver([{"type": "websocket.connect"}]), send)
    assert await ws["wsgi.input"].read() is None


def test_payload_objects_share_one_class() -> None:
    async def build() -> list[Any]:
        async def send(message: Any) -> None:
            pass

        return [
            (
                await engineio_asgi.translate_request(
                    scope("websocket", []), receiver([{"type": "websocket.connect"}]), send
                )
            )["wsgi.input"]
            for _ in range(2)
        ]

    first, second = asyncio.run(build())
    assert type(first) is type(second) is engineio_asgi.AwaitablePayload
    assert not hasattr(first, "__dict__")


# --- the setting -------------------------------------------------------------------------------
def test_the_setting_picks_compact_or_stock_objects_in_both_libraries() -> None:
    compact = engineio_asgi.compact_sio_class(sticky_sio_class(3))(async_mode="asgi")
    stock = sticky_sio_class(3)(async_mode="asgi")
    assert isinstance(compact.eio.create_queue(), CompactQueue)
    assert type(stock.eio.create_queue()) is asyncio.Queue
    assert type(compact.eio.create_queue(5)) is asyncio.Queue  # bounded: asyncio's own
    assert compact.eio._async["translate_request"] is engineio_asgi.translate_request
    assert stock.eio._async["translate_request"] is stock_asgi.translate_request
    assert compact.eio.generate_id().startswith("3.")  # the sticky prefix still applies

    def settings(compact: bool) -> Settings:
        return Settings(_env_file=None, socketio_compact_connections=compact)  # type: ignore[call-arg]

    assert websocket_protocol(settings(True)) is CompactWebSocketProtocol
    assert websocket_protocol(settings(False)) == "auto"
