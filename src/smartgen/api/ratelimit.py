"""Rate limits in Redis that hold across every API process (routes use them through
`deps.rate_limit`)."""

from __future__ import annotations

import math

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smartgen.errors import ServiceUnavailable, TooManyRequests
from smartgen.kit.batching import Coalescer

# One round trip for a batch of hits: each key counted in a fixed window, in order (a key
# named twice is counted twice, as two calls would count it), and each count returned
# with the window's remaining time.
_HITS = """
local out = {}
for i, key in ipairs(KEYS) do
  local window = ARGV[i]
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('PEXPIRE', key, window) end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then redis.call('PEXPIRE', key, window); ttl = tonumber(window) end
  out[#out + 1] = count
  out[#out + 1] = ttl
end
return out
"""

_Hit = tuple[str, int]  # key, window in ms


class RateLimiter:
    """Fixed-window counters in Redis, shared by every API process. Concurrent hits go to
    Redis together (`batching.Coalescer`): a busy API makes one script call for many
    requests instead of one each, and an idle one calls at once."""

    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self._script = client.register_script(_HITS)
        self._prefix = prefix
        self.hits: Coalescer[_Hit, tuple[int, int]] = Coalescer(self._count)

    async def _count(self, hits: list[_Hit]) -> list[tuple[int, int] | Exception]:
        flat = await self._script(keys=[k for k, _ in hits], args=[w for _, w in hits])
        return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

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
        if limit <= 0:
            return
        window_ms = max(1, int(window_seconds * 1000))
        try:
            count, ttl_ms = await self.hits.submit((f"{self._prefix}:{bucket}:{key}", window_ms))
        except (RedisError, OSError, TimeoutError) as exc:
            if fail_open:
                return
            raise unavailable or ServiceUnavailable(
                "The rate limiter (Redis) is unavailable; try again shortly",
                code="rate_limiter_unavailable",
            ) from exc
        if count > limit:
            retry_after = max(1, math.ceil(ttl_ms / 1000))
            raise TooManyRequests(
                f"Too many requests: at most {limit} per {window_seconds:g} s; "
                f"retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )



