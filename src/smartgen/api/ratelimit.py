"""Rate limits in Redis that hold across every API process (routes use them through
`deps.rate_limit`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smartgen.errors import ServiceUnavailable, TooManyRequests
from smartgen.kit.batching import Coalescer

# One round trip for a batch of hits: each key counted in a fixed window, in order (a key
# named twice is counted twice, as two calls would count it), and each count returned
# with the window's remaining time. ARGV per key: window in ms, limit, group. Within a
# group (one request's limits) counting stops at the first key over its limit, as checks
# made one after another would stop: its later keys are not counted (0, 0).
_HITS = """
local out, refused = {}, {}
for i, key in ipairs(KEYS) do
  local window, limit, group = ARGV[3 * i - 2], tonumber(ARGV[3 * i - 1]), ARGV[3 * i]
  if refused[group] then
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    local count = redis.call('INCR', key)
    if count == 1 then redis.call('PEXPIRE', key, window) end
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then redis.call('PEXPIRE', key, window); ttl = tonumber(window) end
    if count > limit then refused[group] = true end
    out[#out + 1] = count
    out[#out + 1] = ttl
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit a request counts against: at most `limit` hits of `key` in `bucket`
    per `window_seconds` (0: off)."""

    bucket: str
    key: str
    limit: int
    window_seconds: float


_Hit = tuple[str, int, int]  # key, window in ms, limit
_Counted = list[tuple[int, int]]  # per hit: count (0: not counted), window's remaining ms


class RateLimiter:
    """Fixed-window counters in Redis, shared by every API process. All the limits of one
    request go in one script call (`hit_all`), and concurrent requests' hits go to Redis
    together (`batching.Coalescer`): a busy API makes one script call for many requests
    instead of one or two each, and an idle one calls at once."""

    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self._script = client.register_script(_HITS)
        self._prefix = prefix
        self.hits: Coalescer[tuple[_Hit, ...], _Counted] = Coalescer(self._count)

    async def _count(self, groups: list[tuple[_Hit, ...]]) -> list[_Counted | Exception]:
        keys: list[str] = []
        args: list[int] = []
        for group, hits in enumerate(groups):
            for key, window_ms, limit in hits:
                keys.append(key)
                args.extend((window_ms, limit, group))
        flat = await self._script(keys=keys, args=args)
        pairs = [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        out: list[_Counted | Exception] = []
        for hits in groups:
            out.append(pairs[: len(hits)])
            del pairs[: len(hits)]
        return out

    async def hit(
        self,
        bucket: str,
        key: str,
        *,
        limit: int,
        window_seconds: float,
        fail_open: bool,
        unavailable: ServiceUnavailable | None = None,
    ) -> None:
        """Count one hit; `TooManyRequests` with `Retry-After` once over `limit`. Without
        Redis the hit passes (`fail_open`) or fails with `unavailable` (by default
        `rate_limiter_unavailable`: a route may name what it could not do anyway)."""
        await self.hit_all(
            [Limit(bucket, key, limit, window_seconds)],
            fail_open=fail_open,
            unavailable=unavailable,
        )

    async def hit_all(
        self,
        limits: Sequence[Limit],
        *,
        fail_open: bool,
        unavailable: ServiceUnavailable | None = None,
    ) -> None:
        """Count one hit against each limit, in order, in one round trip, as `hit` one
        after another would: `TooManyRequests` for the first one over its limit, and the
        limits after it are not counted."""
        active = [one for one in limits if one.limit > 0]
        if not active:
            return
        group = tuple(
            (
                f"{self._prefix}:{one.bucket}:{one.key}",
                max(1, int(one.window_seconds * 1000)),
                one.limit,
            )
            for one in active
        )
        try:
            counted = await self.hits.submit(group)
        except (RedisError, OSError, TimeoutError) as exc:
            if fail_open:
                return
            raise unavailable or ServiceUnavailable(
                "The rate limiter (Redis) is unavailable; try again shortly",
                code="rate_limiter_unavailable",
            ) from exc
        for one, (count, ttl_ms) in zip(active, counted, strict=True):
            if count > one.limit:
                retry_after = max(1, math.ceil(ttl_ms / 1000))
                raise TooManyRequests(
                    f"Too many requests: at most {one.limit} per {one.window_seconds:g} s; "
                    f"retry in {retry_after} s",
                    headers={"Retry-After": str(retry_after)},
                )
