"""Redis commands on pooled connections without redis-py's unused bookkeeping
(`REDIS_LEAN_CALLS`, `redis_clients.LeanRedis` and `LeanPooling`): the same answers and the
same failures as redis-py's own path, through a real Redis; a connection that is dirty,
dropped or being closed handled as redis-py handles it; redis-py's path whenever its
observability is set up, and with the setting off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from smartgen import redis_clients
from smartgen.config import Settings
from smartgen.redis_clients import LeanConnectionPool, LeanRedis, LeanSentinelPool, redis_client
from tests.conftest import RedisServer


@pytest.fixture(params=[True, False], ids=["lean", "stock"])
async def client(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    made = redis_client(settings.model_copy(update={"redis_lean_calls": request.param}), "request")
    yield made
    await made.aclose()


def _idle(client: aioredis.Redis) -> None:
    """Every connection the client took is back in its pool."""
    pool = client.connection_pool
    assert not pool._in_use_connections
    assert pool._available_connections


def test_the_setting_chooses_the_client(settings: Settings) -> None:
    lean = redis_client(settings, "request")
    assert type(lean) is LeanRedis
    assert type(lean.connection_pool) is LeanConnectionPool
    assert lean.connection_pool.connection_class is redis_clients.LeanConnection
    stock = redis_client(settings.model_copy(update={"redis_lean_calls": False}), "request")
    assert type(stock) is aioredis.Redis
    assert type(stock.connection_pool) is ConnectionPool
    assert stock.connection_pool.connection_class is Connection
    # The pool is the one redis-py built from the options: only its class differs.
    made, own = lean.connection_pool.connection_kwargs, stock.connection_pool.connection_kwargs
    assert made.keys() == own.keys()
    plain = (str, int, float, bool, type(None))
    assert {k: v for k, v in made.items() if isinstance(v, plain)} == {
        k: v for k, v in own.items() if isinstance(v, plain)
    }


def test_a_sentinel_pool_gets_the_lean_checkout(settings: Settings) -> None:
    with_sentinels = settings.model_copy(
        update={"redis_sentinels": "127.0.0.1:1", "redis_sentinel_master": "main"}
    )
    made = redis_client(with_sentinels, "request")
    assert type(made) is LeanRedis
    assert type(made.connection_pool) is LeanSentinelPool
    assert isinstance(made.connection_pool, redis_clients.OwnedSentinelPool)
    following = made.connection_pool.connection_class
    assert following is redis_clients.LeanFollowingConnection
    assert issubclass(following, redis_clients.FollowingConnection)


async def test_commands_scripts_and_pipelines_answer_alike(client: Any, unique: str) -> None:
    key = f"lean:{unique}"
    await client.set(key, "héllo")
    assert await client.get(key) == "héllo"
    assert await client.get(f"{key}:missing") is None
    script = client.register_script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[2])}")
    assert await script(keys=[key, f"{key}:n"], args=["ünï"]) == [key, "ünï", 1]
    async with client.pipeline(transaction=True) as pipe:
        pipe.incr(f"{key}:n")
        pipe.hset(f"{key}:h", mapping={"a": 1})
        pipe.hgetall(f"{key}:h")
        assert await pipe.execute() == [2, 1, {"a": "1"}]
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(key)
        await script(keys=[key, f"{key}:n"], args=["x"], client=pipe)
        assert await pipe.execute() == ["héllo", [key, "x", 3]]
    with pytest.raises(ResponseError):
        await client.incr(key)  # not an integer: the server's error, as it was
    # Many at once: each its own connection, all given back.
    answers = await asyncio.gather(*(client.incr(f"{key}:many") for _ in range(50)))
    assert sorted(answers) == list(range(1, 51))
    await client.delete(key, f"{key}:n", f"{key}:h", f"{key}:many")
    _idle(client)


async def test_a_connection_the_server_dropped_is_reconnected(client: Any, unique: str) -> None:
    key = f"lean:{unique}"
    await client.set(key, "value")
    name = f"lean-{unique}"
    await client.client_setname(name)
    async with aioredis.Redis(port=client.connection_pool.connection_kwargs["port"]) as other:
        assert await other.client_kill_filter(_type="normal", skipme=True) >= 1
    await asyncio.sleep(0.05)
    assert await client.get(key) == "value"
    await client.delete(key)
    _idle(client)


async def test_a_cancelled_command_leaves_no_stray_answer(client: Any, unique: str) -> None:
    key = f"lean:{unique}"
    await client.set(key, "value")
    slow = asyncio.ensure_future(client.blpop([f"{key}:list"], timeout=1))
    await asyncio.sleep(0.1)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    await client.rpush(f"{key}:list", "late")  # what the cancelled BLPOP would have taken
    for _ in range(3):
        assert await client.get(key) == "value"
    assert await client.lrange(f"{key}:list", 0, -1) == ["late"]
    await client.delete(key, f"{key}:list")
    _idle(client)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "stock"])
async def test_redis_down_fails_alike_and_recovers(
    settings: Settings, unique: str, lean: bool
) -> None:
    server = RedisServer()
    own = settings.model_copy(
        update={"redis_url": server.url, "redis_lean_calls": lean, "queue_timeout_seconds": 0.5}
    )
    made = redis_client(own, "request")
    try:
        await made.set("k", "1")
        server.stop()
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await made.get("k")
        assert not made.connection_pool._in_use_connections
        server.start()
        assert await made.set("k", "2")
        assert await made.get("k") == "2"
        _idle(made)
    finally:
        await made.aclose()
        server.close()


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "stock"])
async def test_a_write_the_server_does_not_read_times_out_alike(
    settings: Settings, lean: bool
) -> None:
    """A server that accepts and never reads: the command fills the socket's buffers, and
    the write waits for them to drain only as long as the socket timeout, then the
    connection is dropped with redis-py's error."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # holds the connection, reads nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    own = settings.model_copy(update={"redis_lean_calls": lean, "queue_timeout_seconds": 0.5})
    made = redis_client(own, "request")
    pool = made.connection_pool
    connection = pool.make_connection()
    connection.port = port
    try:
        # A connection without the hello handshake (the silent server would never answer).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connection._reader, connection._writer = reader, writer
        connection._parser.on_connect(connection)
        assert type(connection) is (redis_clients.LeanConnection if lean else Connection)
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisTimeoutError, match="Timeout writing to socket"):
            await connection.send_command("SET", "k", "x" * 64_000_000, check_health=False)
        assert asyncio.get_running_loop().time() - started < 5
        assert not connection.is_connected  # dropped, as redis-py drops it
        # A small command on a fresh connection goes out at once, without waiting.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connection._reader, connection._writer = reader, writer
        connection._parser.on_connect(connection)
        await asyncio.wait_for(connection.send_command("PING", check_health=False), 1)
        assert connection.is_connected
    finally:
        await connection.disconnect()
        await made.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


class _Counting:
    """redis-py's own pool methods, counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        for name in ("get_connection", "release"):
            stock = getattr(ConnectionPool, name)

            async def counted(pool: Any, *args: Any, _stock: Any = stock, **kwargs: Any) -> Any:
                self.calls += 1
                return await _stock(pool, *args, **kwargs)

            monkeypatch.setattr(ConnectionPool, name, counted)


async def test_the_lean_path_skips_redis_py_own_pooling(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = redis_client(settings, "request")
    try:
        await made.ping()  # the first connection is made by redis-py's own checkout
        counting = _Counting(monkeypatch)
        for _ in range(5):
            await made.ping()
        assert counting.calls == 0
        # Observability set up: every command goes redis-py's way, hooks and all.
        monkeypatch.setattr(redis_clients, "_observed", lambda: True)
        await made.ping()
        assert counting.calls == 2
        monkeypatch.setattr(redis_clients, "_observed", lambda: False)
        # A pool whose lock is held (being closed) is redis-py's too.
        async with made.connection_pool._lock:
            checkout = asyncio.ensure_future(made.ping())
            await asyncio.sleep(0.05)
            assert not checkout.done()  # waits for the lock, as redis-py's checkout does
        assert await checkout is True
        assert counting.calls >= 3
    finally:
        await made.aclose()


def test_a_pool_laid_out_otherwise_is_left_alone(settings: Settings) -> None:
    class Other(ConnectionPool):
        pass

    other = Other()
    redis_clients._lean_pool(other)
    assert type(other) is Other
    plain = ConnectionPool()
    del plain._in_use_connections
    redis_clients._lean_pool(plain)
    assert type(plain) is ConnectionPool
