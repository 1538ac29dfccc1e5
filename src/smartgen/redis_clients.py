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

Each command of a `redis_client` takes and gives back its pooled connection with less of
redis-py's bookkeeping (`REDIS_LEAN_CALLS`, on by default; false: redis-py's own): redis-py
8 takes the pool's lock, checks its arguments for deprecated ones, runs a connected
connection's `connect` through its retry wrapper, dispatches a re-authentication event and
awaits six OpenTelemetry hooks per command, whether or not anything listens, and sends
each command through `asyncio.wait_for` (on Python 3.11 a task per command). `LeanRedis`,
`LeanPooling` and `LeanSending` skip what cannot apply and hand everything else to
redis-py: a connection that is not connected, has data waiting, must reconnect or
re-authenticate; a pool being closed; a single-connection client; a write the kernel did
not take whole; redis-py's observability once it is set up (tests/test_redis_lean.py,
`bench/redis_calls.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from smartgen.config import Settings

try:  # redis-py's OpenTelemetry metrics (redis >= 7.1): off until set up
    from redis.observability.providers import get_observability_instance

    _OBSERVABILITY: Any = get_observability_instance()
except ImportError:  # pragma: no cover - a redis-py without them records nothing
    _OBSERVABILITY = None

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


def _observed() -> bool:
    """redis-py's OpenTelemetry metrics are set up: every command goes redis-py's way."""
    return _OBSERVABILITY is not None and _OBSERVABILITY.get_provider_manager() is not None


class LeanPooling:
    """A redis-py asyncio `ConnectionPool` (mixed in before it) whose checkout of an idle,
    connected, clean connection and whose return of a healthy one skip redis-py's
    per-call bookkeeping; anything else, redis-py's own (see the module's docstring).
    No lock is needed around the list and set it moves a connection between: nothing
    awaits in between, and a pool whose lock is held (being closed) goes redis-py's way."""

    _available_connections: list[AbstractConnection]
    _in_use_connections: set[AbstractConnection]
    _lock: Any

    async def get_connection(self, *args: Any, **options: Any) -> AbstractConnection:
        stock = super().get_connection  # type: ignore[misc]
        if args or options or self._lock.locked() or _observed():
            return await stock(*args, **options)  # type: ignore[no-any-return]
        available = self._available_connections
        if not available:
            return await stock()  # type: ignore[no-any-return]  # a new connection
        connection = available.pop()
        self._in_use_connections.add(connection)
        try:
            if not connection.is_connected or await connection.can_read():
                # Connects it, or deals with data waiting on it, as redis-py does.
                await self.ensure_connection(connection)  # type: ignore[attr-defined]
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        if (
            connection.should_reconnect()  # type: ignore[no-untyped-call]
            or connection._re_auth_token is not None
            or self._lock.locked()
            or _observed()
        ):
            await super().release(connection)  # type: ignore[misc]
            return
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)


class LeanConnectionPool(LeanPooling, aioredis.ConnectionPool):
    pass


class LeanSending:
    """A redis-py asyncio connection (mixed in before its class) that sends a command
    without `asyncio.wait_for` when nothing can wait: redis-py wraps every write in one
    when a socket timeout is set, and on Python 3.11 that is a task, a future and a timer
    per command, and two more turns of the event loop. The command goes into the
    transport at once; only a write the kernel did not take whole (bytes left in the
    transport's buffer) waits for the buffer to drain, within the socket timeout, as
    redis-py's does. Errors are redis-py's: the same disconnect, the same exceptions."""

    socket_timeout: float | None
    _writer: Any

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        stock = super().send_packed_command  # type: ignore[misc]
        if not self.socket_timeout or not self.is_connected:  # type: ignore[attr-defined]
            await stock(command, check_health)
            return
        if check_health:
            await self.check_health()  # type: ignore[attr-defined]  # (may reconnect)
        try:
            if isinstance(command, str):
                command = command.encode()
            if isinstance(command, bytes):
                command = [command]
            writer = self._writer
            writer.writelines(command)
            if writer.transport.get_write_buffer_size():
                await asyncio.wait_for(writer.drain(), self.socket_timeout)
            else:
                await writer.drain()  # returns at once (or raises the connection's error)
        except TimeoutError:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as e:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            err_no, errmsg = ("UNKNOWN", e.args[0]) if len(e.args) == 1 else e.args[:2]
            raise RedisConnectionError(f"Error {err_no} while writing to socket. {errmsg}.") from e
        except BaseException:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise


class LeanConnection(LeanSending, Connection):
    pass


class LeanSSLConnection(LeanSending, SSLConnection):
    pass


class LeanRedis(aioredis.Redis):
    """redis-py's asyncio client; a command on a pooled connection (not a pipeline's, nor
    a single-connection client's) skips its OpenTelemetry hooks while they are not set
    up, and is otherwise redis-py's: the same retries, the same disconnect on an error,
    the same parsing."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.single_connection_client or self.connection is not None or _observed():
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        pool = self.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            return await conn.retry.call_with_retry(
                lambda: self._send_command_parse_response(  # type: ignore[no-untyped-call]
                    conn, args[0], *args, **options
                ),
                lambda error, failures: conn.disconnect(error=error, failure_count=failures),
                with_failure_count=True,
            )
        finally:
            await pool.release(conn)


def _lean_pool(pool: aioredis.ConnectionPool) -> None:
    """Give a pool redis-py built (or `sentinel_pool`) the lean checkout: the same object,
    its class swapped for the subclass that adds `LeanPooling`'s two methods and no state.
    A pool of another class, or laid out otherwise, is left as it is."""
    lean = {aioredis.ConnectionPool: LeanConnectionPool, OwnedSentinelPool: LeanSentinelPool}
    kind = lean.get(type(pool))
    laid_out = all(
        hasattr(pool, name)
        for name in ("_available_connections", "_in_use_connections", "_lock", "ensure_connection")
    ) and all(
        hasattr(pool.connection_class, name)
        for name in ("is_connected", "can_read", "should_reconnect")
    )
    if kind is not None and laid_out:
        pool.__class__ = kind  # type: ignore[assignment]
    sends = LEAN_CONNECTIONS.get(pool.connection_class)
    if sends is not None and all(
        hasattr(pool.connection_class, name)
        for name in ("send_packed_command", "check_health", "disconnect", "is_connected")
    ):
        pool.connection_class = sends  # the connections it makes from now on


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


class LeanSentinelPool(LeanPooling, OwnedSentinelPool):
    pass


class LeanFollowingConnection(LeanSending, FollowingConnection):
    pass


class LeanFollowingSSLConnection(LeanSending, FollowingSSLConnection):
    pass


# The connection class each pool builds -> the same with `LeanSending`.
LEAN_CONNECTIONS: dict[type[Any], type[Any]] = {
    Connection: LeanConnection,
    SSLConnection: LeanSSLConnection,
    FollowingConnection: LeanFollowingConnection,
    FollowingSSLConnection: LeanFollowingSSLConnection,
}


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
    kind = LeanRedis if settings.redis_lean_calls else aioredis.Redis
    pool = options.get("connection_pool")
    client = kind.from_pool(pool) if pool is not None else kind(**options)
    if settings.redis_lean_calls:
        _lean_pool(client.connection_pool)
    return client


async def close_pool(client: aioredis.Redis) -> None:
    """Close the pool behind a client built from `redis_options` by someone else (bullmq,
    the event bus), which closes only its own connections when given a pool."""
    await client.connection_pool.disconnect()
