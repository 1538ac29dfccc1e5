"""Redis clients, built one way for every part: the queue, the worker, the event bus and
the rate limiter. Each use gets the timeouts it needs:

- `request`: the API's pooled client (queue adds, rate limits, health): short timeouts and
  few retries, so a dead Redis means a quick 503 rather than a request hanging;
- `blocking`: bullmq's worker connections, with no socket timeout: redis-py 8 defaults it
  to 5 s, which breaks the worker's blocking waits (jobs started long after they were due);
- `pubsub`: the event bus, bytes in and out, kept alive by health checks.

With Redis Sentinel (`REDIS_SENTINELS`), every client of every use gets its connections
from a pool that asks the sentinels where the master of `REDIS_SENTINEL_MASTER` is each
time it connects (redis-py's `SentinelConnectionPool`), so a failover is followed by
reconnecting: a connection to the old master fails (or answers READONLY once it is a
replica), the client's retry reconnects, and the new connection goes to the new master.
Each pool owns its sentinel clients and closes them with its connections.

redis-py asks the sentinels only when a pool hands out a new connection; a connection
that reconnects by itself (a single-connection client, as bullmq's worker uses, or a
pub/sub subscription) goes back to the address it had: the dead master
(redis/redis-py#3874, open). `FollowingConnection` asks on every (re)connect; the
failover test (tests/test_failover.py) fails without it.

Every asyncio connection packs its commands with hiredis's C packer, as redis-py's
synchronous connections already do (`REDIS_HIREDIS_PACKING`, on by default; false: redis-py's
packer): redis-py's asyncio one encodes and joins each argument in Python, and bullmq's
scripts carry a dozen or more (about 10 µs a call against 1.5 µs; bench/HISTORY.md, tenth
round). The packer is redis-py's class attribute, so one for the whole process, set by
every `redis_options` call: the same bytes either way (tests/test_redis_packing.py).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from smartgen.config import Settings

try:
    from hiredis import pack_command as _c_pack  # installed with redis[hiredis]
except ImportError:  # pragma: no cover - a machine without hiredis packs in Python
    _c_pack = None  # type: ignore[assignment]

_python_pack = AbstractConnection.pack_command


def _pack_in_c(self: AbstractConnection, *args: Any) -> list[bytes]:
    """redis-py's packing, by hiredis: the same bytes (str as UTF-8, int and float by
    `repr`). What hiredis does not take (a bool, an int subclass, another encoding) goes
    through redis-py's own packer, which packs it or raises its `DataError`."""
    encoder = self.encoder
    if encoder.encoding == "utf-8" and encoder.encoding_errors == "strict":
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        with contextlib.suppress(TypeError):
            return [_c_pack(args)]
    return _python_pack(self, *args)


def pack_commands_in_c(on: bool) -> None:
    """Every asyncio connection of the process, bullmq's too, packs commands with hiredis
    (`on`, when hiredis is installed) or with redis-py's own packer."""
    packer = _pack_in_c if on and _c_pack is not None else _python_pack
    AbstractConnection.pack_command = packer  # type: ignore[method-assign]


Purpose = Literal["request", "blocking", "pubsub"]


def address(settings: Settings) -> dict[str, Any]:
    """Host, port, credentials, database and TLS from `settings.redis_connection_url`."""
    parts = urlsplit(settings.redis_connection_url)
    db_text = parts.path.lstrip("/")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "db": int(db_text) if db_text.isdigit() else 0,
        "ssl": parts.scheme == "rediss",
    }


SENTINEL_TIMEOUT_SECONDS = 1.0  # asking a sentinel where the master is


class FollowingConnection(SentinelManagedConnection):
    """A connection to the current master, asked of the sentinels whenever it connects,
    the pool's checkouts and its own reconnects alike (see the module's docstring)."""

    async def _connect_retry(self) -> None:
        if self._reader:
            return
        await self.connect_check_health(
            check_health=self.connection_pool.check_connection, retry_socket_connect=False
        )

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    pass


class OwnedSentinelPool(SentinelConnectionPool):
    """A sentinel-backed pool that closes its sentinel clients when it is closed (a
    master change only drops its idle connections, and keeps them)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            await self.sentinel_manager.aclose()


def sentinel_pool(settings: Settings, options: dict[str, Any]) -> OwnedSentinelPool:
    """A pool on the current master of REDIS_SENTINEL_MASTER, with `options` (address
    and credentials of the data nodes, timeouts) for its connections."""
    where = address(settings)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        "username": settings.redis_sentinel_user,
        "password": settings.redis_sentinel_password,
        "ssl": where["ssl"],
    }
    manager = Sentinel(  # type: ignore[no-untyped-call]
        settings.sentinel_addresses, sentinel_kwargs=sentinel_kwargs
    )
    kwargs = {k: v for k, v in options.items() if k not in ("host", "port", "ssl")}
    kwargs["connection_class"] = FollowingSSLConnection if where["ssl"] else FollowingConnection
    return OwnedSentinelPool(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master, manager, **kwargs
    )


def redis_options(settings: Settings, purpose: Purpose) -> dict[str, Any]:
    """redis-py keyword arguments for one use (see the module's docstring). With
    Sentinel they hold a `connection_pool` of the caller's: close it with the client
    (`redis_client` does; `close_pool` for a client built from these elsewhere)."""
    pack_commands_in_c(settings.redis_hiredis_packing)
    options = address(settings)
    if purpose == "request":
        timeout = settings.queue_timeout_seconds
        options.update(
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=min(2.0, timeout),
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            health_check_interval=30,
            max_connections=256,
        )
    elif purpose == "blocking":
        options.update(
            socket_timeout=None,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=30,
        )
    else:
        options.update(socket_connect_timeout=5, health_check_interval=30)
    if not settings.redis_sentinels:
        return options
    if purpose == "blocking":
        # bullmq sets these on the clients it builds, but a client given a pool takes the
        # pool's: decoded replies, and retries that outlast a failover, briefly spaced.
        options.update(
            decode_responses=True,
            retry=Retry(
                ExponentialBackoff(cap=2.0, base=0.1),
                30,
                supported_errors=(RedisConnectionError, RedisTimeoutError),
            ),
        )
    return {"connection_pool": sentinel_pool(settings, options)}


def redis_client(settings: Settings, purpose: Purpose) -> aioredis.Redis:
    """A client for one use; create it inside the running loop and close it on shutdown
    (its pool, and with Sentinel its sentinel clients, close with it)."""
    options = redis_options(settings, purpose)
    pool = options.get("connection_pool")
    if pool is not None:
        return aioredis.Redis.from_pool(pool)
    return aioredis.Redis(**options)


async def close_pool(client: aioredis.Redis) -> None:
    """Close the pool behind a client built from `redis_options` by someone else (bullmq,
    the event bus), which closes only its own connections when given a pool."""
    await client.connection_pool.disconnect()
