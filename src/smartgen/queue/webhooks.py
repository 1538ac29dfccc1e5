"""The webhook delivery queue (`{QUEUE_NAME}-webhooks`), apart from the generation queue
so that slow receivers never hold up generations: one bullmq message per attempt,
`{deliveryId}-{attempt}`, carrying only the delivery's id. Retries are scheduled by the
delivery task as new messages, at the delays of WEBHOOK_RETRY_DELAYS_SECONDS.

Beside it, each user's endpoint change token (`endpoints_changed`, `change_token`): a
random value rewritten after every write of the user's endpoints, which a worker reads at
a job's end to know whether the endpoints it remembers are still current
(`webhooks.endpoints.CachedEndpoints`). Reads of concurrent job ends go together in one
`MGET`."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import redis.asyncio as aioredis
from bullmq import Queue
from redis.exceptions import RedisError

from smartgen.config import Settings
from smartgen.errors import QueueUnavailable
from smartgen.kit.batching import WORKER_SPACING, Coalescer

JOB_NAME = "deliver"
KEEP_FINISHED = 1000
# A change token outlives by far any cached copy of the endpoints (their max age): a token
# that expired is seen as None, which a copy read before it was ever set may still hold,
# but such a copy has long been read again.
CHANGE_TOKEN_SECONDS = 7 * 86400


def webhook_queue_name(settings: Settings) -> str:
    return f"{settings.queue_name}-webhooks"


class BullWebhookQueue:
    """`ports.WebhookQueue` on bullmq; closing it closes the Redis client it was given."""

    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self._queue = Queue(
            webhook_queue_name(settings), {"connection": client, "prefix": settings.queue_prefix}
        )
        self._timeout = settings.queue_timeout_seconds
        self._client = client
        self._tokens_prefix = f"{settings.queue_prefix}:smartgen:webhooks-changed:"
        # Read at each job's end: spaced as the worker's per-job round trips are.
        self._tokens: Coalescer[str, str | None] = Coalescer(
            self._read_tokens, spacing=WORKER_SPACING
        )

    async def enqueue_delivery(
        self, delivery_id: str, *, attempt: int, delay_ms: int, again: bool = False
    ) -> None:
        message_id = f"{delivery_id}-{attempt}"
        if again:  # not the scheduled message's id, which may be waiting still
            message_id += "-" + secrets.token_hex(4)
        options: dict[str, Any] = {
            "jobId": message_id,
            "delay": max(0, delay_ms),
            "attempts": 3,  # a crash while sending; the task's own retries are new messages
            "backoff": {"type": "fixed", "delay": 1000},
            "removeOnComplete": {"count": KEEP_FINISHED},
            "removeOnFail": {"count": KEEP_FINISHED},
        }
        data = {"deliveryId": delivery_id, "attempt": attempt}
        try:
            async with asyncio.timeout(self._timeout):
                await self._queue.add(JOB_NAME, data, options)
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueUnavailable(
                "The webhook queue (Redis) is unavailable; try again shortly"
            ) from exc

    async def endpoints_changed(self, user_id: str) -> None:
        async with asyncio.timeout(self._timeout):
            await self._client.set(
                self._tokens_prefix + user_id, secrets.token_hex(8), ex=CHANGE_TOKEN_SECONDS
            )

    async def change_token(self, user_id: str) -> str | None:
        return await self._tokens.submit(user_id)

    async def _read_tokens(self, user_ids: list[str]) -> list[str | None]:
        async with asyncio.timeout(self._timeout):
            values = await self._client.mget([self._tokens_prefix + u for u in user_ids])
        return [v.decode() if isinstance(v, bytes) else v for v in values]

    async def close(self) -> None:
        await self._queue.close()
