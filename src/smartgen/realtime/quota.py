"""How many Socket.IO connections one user holds, across every API process (a Redis sorted
set per user: member the socket's id, score the time its entry lapses).

A process counts a socket in when its handshake succeeds and out when it disconnects, and
renews its sockets' entries every third of SOCKET_ENTRY_SECONDS, so the entries of a
process that died lapse by themselves instead of holding its users' places forever. The
check and the insert are one script: two handshakes racing for the last place cannot
both get it. Without Redis a handshake is let through (the quota is a guard against
floods, not an authorisation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SOCKET_ENTRY_SECONDS = 90.0

# KEYS[1]: the user's set; ARGV: now, lapses at, cap, member, key ttl (ms).
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class SocketQuota:
    """At most `cap` sockets per user (0: no cap)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, cap: int) -> None:
        self._client = client
        self._prefix = prefix
        self.cap = cap
        self._take = client.register_script(_TAKE)
        self._held: dict[str, str] = {}  # sid -> user id, on this process
        self._renewer: asyncio.Task[None] | None = None

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}:sockets:{user_id}"

    async def take(self, user_id: str, sid: str) -> bool:
        """Count `sid` in for `user_id`; False when the user already holds `cap` sockets."""
        if self.cap <= 0:
            return True
        now = time.time()
        try:
            taken = await self._take(
                keys=[self._key(user_id)],
                args=[
                    now,
                    now + SOCKET_ENTRY_SECONDS,
                    self.cap,
                    sid,
                    int(SOCKET_ENTRY_SECONDS * 2000),
                ],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "Socket.IO: the per-user socket count is unavailable: %s", type(exc).__name__
            )
            return True
        if not taken:
            return False
        self._held[sid] = user_id
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew())
        return True

    async def release(self, sid: str) -> None:
        user_id = self._held.pop(sid, None)
        if user_id is None:
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self._client.zrem(self._key(user_id), sid)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(SOCKET_ENTRY_SECONDS / 3)
            if not self._held:
                continue
            lapses = time.time() + SOCKET_ENTRY_SECONDS
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for sid, user_id in list(self._held.items()):
                        pipe.zadd(self._key(user_id), {sid: lapses}, xx=True)
                    await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("Socket.IO: socket counts not renewed: %s", type(exc).__name__)

    async def close(self) -> None:
        """Stop renewing and count this process's sockets out (they end with it)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        for sid in list(self._held):
            await self.release(sid)
