"""The webhook delivery queue (`{QUEUE_NAME}-webhooks`), apart from the generation queue
so that slow receivers never hold up generations: one bullmq message per attempt,
`{deliveryId}-{attempt}`, carrying only the delivery's id. Retries are scheduled by the
delivery task as new messages, at the delays of WEBHOOK_RETRY_DELAYS_SECONDS."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import redis.asyncio as aioredis
from bullmq import Queue
from redis.exceptions import RedisError

from smartgen.config import Settings
from smartgen.errors import QueueUnavailable

JOB_NAME = "deliver"
KEEP_FINISHED = 1000


def webhook_queue_name(settings: Settings) -> str:
    return f"{settings.queue_name}-webhooks"


class BullWebhookQueue:
    """`ports.WebhookQueue` on bullmq; closing it closes the Redis client it was given."""

    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self._queue = Queue(
            webhook_queue_name(settings), {"connection": client, "prefix": settings.queue_prefix}
        )
        self._timeout = settings.queue_timeout_seconds

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

    async def close(self) -> None:
        await self._queue.close()
