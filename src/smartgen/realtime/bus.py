"""The event bus between processes: python-socketio's pub/sub client manager on a Redis
client we own. API processes subscribe; the worker publishes with a write-only manager.

`socketio.AsyncRedisManager` builds a new Redis client on every (re)connect without
closing the previous one (an emit before the first subscriber leaks a connection), has no
close, and cannot say when its subscription is live; this one does all three through the
two methods python-socketio leaves to pub/sub backends (`_publish`, `_listen`). Batching
between processes is `batched_relay.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.client import PubSub
from socketio.async_pubsub_manager import AsyncPubSubManager

from smartgen.config import Settings
from smartgen.kit import jsoncodec
from smartgen.kit.batching import WORKER_SPACING
from smartgen.realtime import batched_relay
from smartgen.realtime.events import Event, EventPublisher, seq_room, with_seq
from smartgen.realtime.log import EventLog
from smartgen.realtime.subscribers import LocalSubscribers
from smartgen.redis_clients import redis_options

log = logging.getLogger("smartgen.socketio")  # Redis listener errors stay visible


class RedisManager(AsyncPubSubManager):  # type: ignore[misc]
    name = "smartgen-redis"

    def __init__(
        self,
        *,
        channel: str,
        write_only: bool,
        redis_options: dict[str, Any],
        batched: bool = True,
    ) -> None:
        super().__init__(channel=channel, write_only=write_only, logger=log, json=jsoncodec)
        self.redis_options = redis_options
        self.batched = batched
        self.local = LocalSubscribers()  # `GET /events` listeners in this process
        self.redis: aioredis.Redis | None = None
        self.pubsub: PubSub | None = None
        # Set once Redis confirmed our SUBSCRIBE: from then on every publish reaches us.
        self.subscribed = asyncio.Event()
        self._closing = False
        # The task python-socketio runs our listener in (it keeps no public handle).
        self._listener: asyncio.Task[Any] | None = None
        self._own_prefix = batched_relay.own_batch_prefix(self.json, self.host_id)

    def _client(self) -> aioredis.Redis:
        if self.redis is None:  # created lazily, inside the running loop
            self.redis = aioredis.Redis(**self.redis_options)
        return self.redis

    async def emit_many(self, events: list[Event]) -> None:
        """Emit each event to its room, on every process, in order."""
        if self.batched:
            await batched_relay.emit_batch(self, events)
            return
        for event, payload, room, seq in events:
            await self.emit(event, payload, room=room, namespace="/")
            if seq is not None:
                numbered = with_seq(event, payload, seq)
                await self.emit(event, numbered, room=seq_room(room), namespace="/")

    def publish_plan(self, events: list[Event]) -> tuple[str, str] | None:
        """`events.LoggedRelay`: with batches, the event log's call publishes them."""
        return batched_relay.publish_plan(self, events) if self.batched else None

    async def deliver_here(self, events: list[Event]) -> None:
        await batched_relay.deliver_here(self, events)

    def reaches_a_client(self, message: dict[str, Any]) -> bool:
        return not self.batched or batched_relay.reaches_a_client(self, message)

    def _from_this_process(self, data: bytes | str) -> bool:
        raw = data.encode() if isinstance(data, str) else data
        return raw.startswith(self._own_prefix)

    async def publish_text(self, text: str) -> None:
        await self._client().publish(self.channel, text)

    async def _publish(self, data: Any) -> None:
        # redis-py retries connection errors itself; what still fails reaches the caller
        # (the EventPublisher counts it as dropped).
        await self.publish_text(self.json.dumps(data))

    async def _listen(self) -> AsyncIterator[Any]:
        self._listener = asyncio.current_task()
        channel = self.channel.encode()
        pause = 1.0
        while not self._closing:
            self.pubsub = pubsub = self._client().pubsub()
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    if message.get("channel") != channel:
                        continue
                    if message["type"] == "subscribe":
                        self.subscribed.set()
                        pause = 1.0
                    elif message["type"] == "message":
                        data = message["data"]
                        if self.batched and self._from_this_process(data):
                            continue
                        for item in batched_relay.manager_messages(self.json, data):
                            self.local.offer(item)
                            if not self.batched or not batched_relay.is_event(item):
                                yield item  # python-socketio delivers it
                            elif item.get("host_id") != self.host_id:
                                await batched_relay.deliver_if_here(self, item)
            except Exception as exc:  # Redis down or restarting: resubscribe with backoff
                self.subscribed.clear()
                log.warning("Redis subscription lost (%s); retrying in %.0fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def wait_subscribed(self, seconds: float) -> bool:
        """Whether the subscription is live, waiting for it at most `seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), seconds)
        return self.subscribed.is_set()

    async def close(self) -> None:
        """Stop the listener and close every Redis connection."""
        self._closing = True
        listener, self._listener = self._listener, None
        if listener is not None and not listener.done():
            # python-socketio's listener loop ends quietly on cancellation.
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        self.pubsub = None
        if self.redis is not None:
            with contextlib.suppress(Exception):
                # and its pool: with Sentinel the pool is ours (redis_clients.redis_options)
                await self.redis.aclose(close_connection_pool=True)
            self.redis = None
        self.subscribed.clear()


def event_channel(settings: Settings) -> str:
    """The pub/sub channel of one deployment: deployments sharing a Redis (distinct queue
    prefixes or names) never see each other's events."""
    return f"{settings.queue_prefix}:{settings.queue_name}:socketio"


def redis_manager(settings: Settings, *, write_only: bool) -> RedisManager:
    """The Socket.IO manager on the deployment's Redis."""
    return RedisManager(
        channel=event_channel(settings),
        write_only=write_only,
        redis_options=redis_options(settings, "pubsub"),
        batched=settings.realtime_batched_relay,
    )


async def close_manager(manager: RedisManager) -> None:
    """Stop the manager's listener and close its Redis connections."""
    await manager.close()


def event_log(settings: Settings, client: aioredis.Redis) -> EventLog:
    """The deployment's per-user event logs, namespaced like its rate limits."""
    return EventLog(
        client,
        f"{settings.queue_prefix}:smartgen",
        max_events=settings.event_log_max_events,
        max_age_seconds=settings.event_log_max_age_seconds,
    )


def worker_publisher(
    settings: Settings, log: EventLog | None = None
) -> tuple[EventPublisher, RedisManager]:
    """The worker's notifier: a write-only Redis manager behind a background publisher
    that numbers events in `log`."""
    manager = redis_manager(settings, write_only=True)
    publisher = EventPublisher(
        manager.emit_many, numbering=log, relay=manager, spacing=WORKER_SPACING
    )
    return publisher, manager
