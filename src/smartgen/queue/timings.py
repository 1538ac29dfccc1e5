"""`ports.Timings` in Redis: the last processing times per content type, and their median.

The worker records each completed job's processing time (a list per content type, kept to
the newest `keep`, written at most once a second); the API reads the median when it answers
a queued job, at most once per `cache_seconds` per content type and process, so a busy API
adds no Redis call per request.
"""

from __future__ import annotations

import statistics
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class RedisTimings:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        *,
        keep: int = 50,
        cache_seconds: float = 10.0,
        flush_seconds: float = 1.0,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._keep = keep
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, float | None]] = {}  # type -> (until, median)
        self._flush_seconds = flush_seconds
        self._flushed_at = -flush_seconds  # the first figure goes out at once
        self._pending: dict[str, list[str]] = {}

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
        """Kept in memory and written at most once per `flush_seconds`, all content types
        in one round trip: on a busy worker one call per second, not one per job. A
        process that dies loses at most that second's figures (estimates only)."""
        pending = self._pending.setdefault(content_type, [])
        pending.append(f"{max(0.0, seconds):.3f}")
        del pending[: -self._keep]
        now = time.monotonic()
        if now < self._flushed_at + self._flush_seconds:
            return
        self._flushed_at = now
        batch, self._pending = self._pending, {}
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for kind, values in batch.items():
                    key = self._key(kind)
                    pipe.lpush(key, *values)
                    pipe.ltrim(key, 0, self._keep - 1)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError):
            pass  # statistics only: an estimate falls back to EXPECTED_PROCESSING_SECONDS
