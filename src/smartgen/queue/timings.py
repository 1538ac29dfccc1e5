"""`ports.Timings` in Redis: the last processing times per content type, and their median.

The worker records each completed job's processing time (a list per content type, kept to
the newest `keep`); the API reads the median when it answers a queued job, at most once per
`cache_seconds` per content type and process, so a busy API adds no Redis call per request.
"""

from __future__ import annotations

import statistics
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class RedisTimings:
    def __init__(
        self, client: aioredis.Redis, prefix: str, *, keep: int = 50, cache_seconds: float = 10.0
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._keep = keep
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, float | None]] = {}  # type -> (until, median)

    def _key(self, content_type: str) -> str:
        return f"{self._prefix}:durations:{content_type}"

    async def typical_seconds(self, content_type: str) -> float | None:
        now = time.monotonic()
        cached = self._cache.get(content_type)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            values = await self._client.lrange(self._key(content_type), 0, -1)
        except (RedisError, OSError, TimeoutError):
            return cached[1] if cached is not None else None
        numbers = [float(v) for v in values]
        median = statistics.median(numbers) if numbers else None
        self._cache[content_type] = (now + self._cache_seconds, median)
        return median

    async def record(self, content_type: str, seconds: float) -> None:
        key = self._key(content_type)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.lpush(key, f"{max(0.0, seconds):.3f}")
                pipe.ltrim(key, 0, self._keep - 1)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError):
            pass  # statistics only: an estimate falls back to EXPECTED_PROCESSING_SECONDS
