"""Commands packed by hiredis (`REDIS_HIREDIS_PACKING`, `redis_clients.pack_commands_in_c`):
the same bytes as redis-py's own packer for every argument it takes, its errors for what it
refuses, and real commands, scripts and transactions through a real Redis, on both paths."""

from __future__ import annotations

import enum
from collections.abc import Iterator

import pytest
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import DataError

from smartgen import redis_clients
from smartgen.config import Settings
from smartgen.redis_clients import redis_client


class Size(enum.IntEnum):
    large = 3


class State(enum.StrEnum):
    queued = "queued"


CASES = [
    ("SET", "key", "value"),
    ("CONFIG GET", "maxmemory"),  # a command name of two words is sent as two
    (b"CLIENT SETNAME", b"x"),
    ("SET", "k", "héllo ✓ \U0001f600"),
    ("SET", b"k", b"\x00\xff binary"),
    ("SET", "k", memoryview(b"viewed")),
    ("SET", "k", bytearray(b"array")),
    ("SET", "k", 0.1 + 0.2),
    ("SET", "k", 1e20),
    ("SET", "k", -0.0),
    ("SET", "k", float("inf")),
    ("SET", "k", 2**70),
    ("SET", "k", -5),
    ("SET", "k", State.queued),  # a str subclass: its value
    ("SET", "k", Size.large),  # an int subclass hiredis refuses: redis-py's packer
    ("EVALSHA", "a" * 40, 3, "k1", "k2", "k3", *[f"arg{i}" for i in range(40)]),
    ("SET", "k", "x" * 100_000),  # over redis-py's chunking size
]


@pytest.fixture(params=[True, False], ids=["hiredis-packing", "stock-packing"])
def packing(request: pytest.FixtureRequest) -> Iterator[bool]:
    redis_clients.pack_commands_in_c(request.param)
    yield request.param
    redis_clients.pack_commands_in_c(True)


@pytest.fixture
def connection(packing: bool) -> Connection:
    return Connection()


def test_the_setting_chooses_the_process_packer(settings: Settings) -> None:
    redis_clients.redis_options(
        settings.model_copy(update={"redis_hiredis_packing": False}), "request"
    )
    assert AbstractConnection.pack_command is redis_clients._python_pack
    redis_clients.redis_options(settings, "request")  # on by default
    assert AbstractConnection.pack_command is redis_clients._pack_in_c


@pytest.mark.parametrize("args", CASES, ids=range(len(CASES)))
def test_the_same_bytes_as_redis_py(connection: Connection, args: tuple[object, ...]) -> None:
    packed = b"".join(connection.pack_command(*args))
    expected = b"".join(redis_clients._python_pack(connection, *args))
    assert packed == expected


@pytest.mark.parametrize("value", [True, None, object(), {"a": 1}])
def test_what_redis_py_refuses_is_refused_alike(connection: Connection, value: object) -> None:
    with pytest.raises(DataError):
        connection.pack_command("SET", "k", value)


def test_another_encoding_is_packed_by_redis_py() -> None:
    latin = Connection(encoding="latin-1")
    packed = b"".join(latin.pack_command("SET", "k", "é"))
    assert packed == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"


async def test_commands_and_scripts_through_a_real_redis(
    settings: Settings, unique: str, packing: bool
) -> None:
    client = redis_client(settings.model_copy(update={"redis_hiredis_packing": packing}), "request")
    expected = redis_clients._pack_in_c if packing else redis_clients._python_pack
    assert AbstractConnection.pack_command is expected
    try:
        key = f"packing:{unique}"
        text = "héllo ✓ \U0001f600 " * 1000
        await client.set(key, text)
        assert await client.get(key) == text
        script = client.register_script("return {ARGV[1], ARGV[2], KEYS[1]}")
        assert await script(keys=[key], args=[1.5, "ünï"]) == ["1.5", "ünï", key]
        async with client.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(f"{key}:n", 0.25)
            pipe.hset(f"{key}:h", mapping={"a": 1, "b": "two"})
            pipe.hgetall(f"{key}:h")
            assert await pipe.execute() == [0.25, 2, {"a": "1", "b": "two"}]
        await client.delete(key, f"{key}:n", f"{key}:h")
    finally:
        await client.aclose()
