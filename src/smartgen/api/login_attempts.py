"""Failed logins in Redis, counted so that guessing a password locks out only the guesser.

- Per (email, address): `LOGIN_RATE_LIMIT` failures per `LOGIN_RATE_WINDOW_SECONDS`,
  then that address is refused for that email (the owner's other addresses are not).
- Per email, from all addresses: `LOGIN_EMAIL_FAILURE_LIMIT` failures per window; past
  it, only addresses that logged in to the account before (within
  `LOGIN_KNOWN_ADDRESS_DAYS`) are heard, so a guesser spread over many addresses stops
  while the owner, from where they usually log in, still gets in.

Only failures count: a correct password from an address still under its limits always
gets through. Emails are hashed in key names. Without Redis, logins go on (fail open):
the per-address limits of the routes still apply."""

from __future__ import annotations

import hashlib
import logging
import math
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smartgen.config import Settings
from smartgen.errors import TooManyRequests

log = logging.getLogger("smartgen.api")


class RedisLoginAttempts:
    def __init__(self, client: aioredis.Redis, settings: Settings, *, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._pair_limit = settings.login_rate_limit
        self._email_limit = settings.login_email_failure_limit
        self._window_ms = max(1, int(settings.login_rate_window_seconds * 1000))
        self._known_seconds = settings.login_known_address_days * 86400

    def _keys(self, email: str, address: str) -> tuple[str, str, str]:
        account = hashlib.sha256(email.encode()).hexdigest()[:32]
        return (
            f"{self._prefix}:pair:{account}:{address}",
            f"{self._prefix}:email:{account}",
            f"{self._prefix}:known:{account}",
        )

    async def check(self, email: str, address: str) -> None:
        pair, per_email, known = self._keys(email, address)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(pair)
                pipe.pttl(pair)
                pipe.get(per_email)
                pipe.pttl(per_email)
                pipe.zscore(known, address)
                pair_count, pair_ttl, email_count, email_ttl, seen = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("login limits unavailable (Redis): %s", type(exc).__name__)
            return
        if self._pair_limit and int(pair_count or 0) >= self._pair_limit:
            self._refuse(pair_ttl, "from this address")
        over = self._email_limit and int(email_count or 0) >= self._email_limit
        is_known = seen is not None and float(seen) >= time.time() - self._known_seconds
        if over and not is_known:
            self._refuse(email_ttl, "for this account from a new address")

    def _refuse(self, ttl_ms: int, where: str) -> None:
        retry_after = max(1, math.ceil(max(ttl_ms, 0) / 1000))
        raise TooManyRequests(
            f"Too many failed logins {where}; retry in {retry_after} s",
            code="too_many_failed_logins",
            headers={"Retry-After": str(retry_after)},
        )

    async def failed(self, email: str, address: str) -> None:
        pair, per_email, _ = self._keys(email, address)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in (pair, per_email):  # a new counter starts its window
                    pipe.set(key, 0, px=self._window_ms, nx=True)
                    pipe.incr(key)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("login limits unavailable (Redis): %s", type(exc).__name__)

    async def succeeded(self, email: str, address: str) -> None:
        pair, _, known = self._keys(email, address)
        now = time.time()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(pair)
                pipe.zadd(known, {address: now})
                pipe.zremrangebyscore(known, "-inf", now - self._known_seconds)
                pipe.zremrangebyrank(known, 0, -101)  # the 100 latest addresses
                pipe.expire(known, int(self._known_seconds) + 1)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("login limits unavailable (Redis): %s", type(exc).__name__)
