"""`ports.LiveText` in Redis: what a running job has written so far, for
`GET /generate-content/{jobId}` (`partialContent`). One key per running job, appended to at
most a few times a second, expiring on its own; never the job's content, which only the
store holds once the job completes."""

from __future__ import annotations

import redis.asyncio as aioredis

LIVE_TEXT_SECONDS = 3600


class RedisLiveText:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def _key(self, job_id: str) -> str:
        return f"{self._prefix}:partial:{job_id}"

    async def append(self, job_id: str, text: str, *, first: bool = False) -> None:
        key = self._key(job_id)
        if first:
            await self._client.set(key, text, ex=LIVE_TEXT_SECONDS)
            return
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.append(key, text)
            pipe.expire(key, LIVE_TEXT_SECONDS)
            await pipe.execute()

    async def clear(self, job_id: str) -> None:
        await self._client.delete(self._key(job_id))

    async def get(self, job_id: str) -> str | None:
        value = await self._client.get(self._key(job_id))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
