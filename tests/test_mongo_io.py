"""PyMongo's asyncio send and receive in the caller's task (`store/mongo_io.py`): the same
answers and the same failures as PyMongo's own, each test run on both (`lean`, `stock`),
through a proxy in front of a real MongoDB wire-protocol server that can hold the
server's replies back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pymongo
import pytest
from pymongo import AsyncMongoClient, UpdateOne
from pymongo.errors import PyMongoError

from smartgen.store import mongo_io
from tests.conftest import free_port


class HoldingProxy:
    """A TCP proxy to `upstream`; while `held`, the server's bytes wait in the proxy."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.released = asyncio.Event()
        self.released.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def hold(self) -> None:
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if held:
                        await self.released.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        tasks = [
            asyncio.create_task(pump(reader, up_writer, False)),
            asyncio.create_task(pump(up_reader, writer, True)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)


@pytest.fixture(params=["lean", "stock"])
def io(request: pytest.FixtureRequest) -> Iterator[str]:
    assert mongo_io.lean_io(request.param == "lean") == (request.param == "lean")
    yield request.param
    mongo_io.lean_io(True)


@pytest.fixture
async def proxy(mongo_uri: str) -> AsyncIterator[HoldingProxy]:
    hostport = mongo_uri.split("://", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    async with HoldingProxy((host, int(port))) as running:
        yield running


def client_of(proxy: HoldingProxy, **options: Any) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(
        f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true",
        retryReads=False,
        retryWrites=False,
        serverSelectionTimeoutMS=5000,
        **options,
    )


async def failure_of(call: Any) -> tuple[type[BaseException], str, float]:
    started = time.monotonic()
    try:
        await call
    except BaseException as exc:
        return type(exc), str(exc), time.monotonic() - started
    raise AssertionError("the call did not fail")


async def test_operations_answer_the_same(io: str, proxy: HoldingProxy, unique: str) -> None:
    client = client_of(proxy)
    try:
        jobs = client[f"io_{unique}"]["jobs"]
        await jobs.insert_many([{"n": i, "tag": "x" * i} for i in range(50)])
        assert (await jobs.find_one({"n": 7}) or {})["tag"] == "x" * 7
        await jobs.bulk_write([UpdateOne({"n": i}, {"$set": {"done": True}}) for i in range(10)])
        assert await jobs.count_documents({"done": True}) == 10
        assert len([d async for d in jobs.find({}).batch_size(7)]) == 50  # getMore replies
        await client.drop_database(f"io_{unique}")
    finally:
        await client.close()


async def test_a_reply_later_than_the_socket_timeout_fails_as_pymongo_says(
    io: str, proxy: HoldingProxy, unique: str
) -> None:
    client = client_of(proxy, socketTimeoutMS=300)
    try:
        jobs = client[f"io_{unique}"]["jobs"]
        await jobs.insert_one({"n": 1})
        proxy.hold()
        kind, message, seconds = await asyncio.wait_for(failure_of(jobs.find_one({"n": 1})), 10)
        assert kind is pymongo.errors.NetworkTimeout, (kind, message)
        assert "timed out" in message
        assert 0.25 <= seconds < 3, seconds
        proxy.release()
        # An operation's own deadline (pymongo.timeout) likewise.
        await jobs.insert_one({"n": 2})
        proxy.hold()
        with pymongo.timeout(0.3):
            kind, message, seconds = await asyncio.wait_for(failure_of(jobs.find_one({"n": 2})), 10)
        assert issubclass(kind, PyMongoError) and "timed out" in message.lower(), (kind, message)
        assert seconds < 3, seconds
    finally:
        proxy.release()
        await client.close()


async def test_an_interrupted_connection_stops_waiting_for_its_reply(
    io: str, proxy: HoldingProxy, unique: str
) -> None:
    """A pool cleared with interruptInUseConnections cancels its connections' operations:
    the waiting read stops within the half second PyMongo's own poll takes."""
    client = client_of(proxy)
    try:
        jobs = client[f"io_{unique}"]["jobs"]
        await jobs.insert_one({"n": 1})
        proxy.hold()
        waiting = asyncio.create_task(failure_of(jobs.find_one({"n": 1})))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        # PyMongo's own call when a monitor times out (the CMAP spec's interruption).
        (server,) = client._topology._servers.values()
        await server.pool.reset(interrupt_connections=True)
        kind, message, seconds = await asyncio.wait_for(waiting, 5)
        assert issubclass(kind, pymongo.errors.AutoReconnect), (kind, message)
        assert "cancelled" in message, message
        assert seconds < 0.2 + 0.5 + 1.0, seconds
    finally:
        proxy.release()
        await client.close()


async def test_no_timer_runs_once_nothing_waits(io: str, proxy: HoldingProxy, unique: str) -> None:
    """The reads without a deadline share one timer per loop, which stops with the last
    read: an idle process has none (bench/idle.py)."""
    client = client_of(proxy)
    try:
        jobs = client[f"io_{unique}"]["jobs"]
        await asyncio.gather(*(jobs.insert_one({"n": i}) for i in range(20)))
        proxy.hold()
        waiting = asyncio.create_task(jobs.find_one({"n": 1}))
        await asyncio.sleep(0.05)
        rounds = mongo_io._Rounds.of(asyncio.get_running_loop())
        assert (len(rounds._watches) == 1) == (io == "lean")
        assert rounds._handle is not None or io == "stock"
        proxy.release()
        assert (await waiting or {})["n"] == 1
        await asyncio.sleep(mongo_io.POLL_SECONDS + 0.2)
        assert rounds._handle is None and not rounds._watches
    finally:
        proxy.release()
        await client.close()


async def test_the_callers_own_cancellation_is_passed_on(
    io: str, proxy: HoldingProxy, unique: str
) -> None:
    client = client_of(proxy)
    try:
        jobs = client[f"io_{unique}"]["jobs"]
        await jobs.insert_one({"n": 1})
        proxy.hold()
        task = asyncio.create_task(jobs.find_one({"n": 1}))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await jobs.find_one({"n": 1})
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        proxy.release()
        # The client goes on: a new connection for the next call.
        assert (await jobs.find_one({"n": 1}) or {})["n"] == 1
    finally:
        proxy.release()
        await client.close()


def test_lean_io_is_swapped_for_the_whole_process() -> None:
    import pymongo.asynchronous.pool as pool

    assert mongo_io.lean_io(False) is False
    assert pool.async_receive_message is not mongo_io.receive_message
    assert mongo_io.lean_io(True) is True
    assert pool.async_receive_message is mongo_io.receive_message
    assert pool.async_sendall is mongo_io.sendall
