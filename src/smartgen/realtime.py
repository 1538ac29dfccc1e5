"""Real-time job events over Socket.IO, across processes through Redis.

API processes run an `AsyncServer` whose Redis client manager subscribes to the shared
channel; the worker publishes with a write-only manager. Every event goes to the room
`user:<id>`, so only the owner's connections (every tab) receive it.

Events (the first one is the seed's contract, exactly):
- `job_completed` {userId, jobId, status: "completed", generatedContent, completedAt}
- `job_failed`    {userId, jobId, status: "failed", error, failedAt}
- `job_status`    {userId, jobId, status, at}   for every transition
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs

import socketio
from redis import asyncio as aioredis
from redis.asyncio.client import PubSub
from socketio.async_pubsub_manager import AsyncPubSubManager

from smartgen import jsoncodec
from smartgen.auth.tokens import TokenCodec, bearer_token
from smartgen.config import Settings
from smartgen.errors import AppError, Unauthorized
from smartgen.store.base import Job, JobStatus, Store
from smartgen.times import iso_ms, parse_iso

log = logging.getLogger(__name__)
socketio_log = logging.getLogger("smartgen.socketio")  # Redis listener errors stay visible

SYNC_LIMIT = 500
# How long a handshake may wait for this process's Redis subscription (first client only):
# a client that was told "connected" must not miss an event published right after.
SUBSCRIBE_WAIT_SECONDS = 5.0
Event = tuple[str, dict[str, Any], str]  # (event name, payload, room)
EmitBatch = Callable[[list[Event]], Awaitable[None]]


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


def status_payload(job: Job) -> dict[str, Any]:
    return {
        "userId": job.user_id,
        "jobId": job.job_id,
        "status": job.status.value,
        "at": iso_ms(job.updated_at),
    }


def job_events(job: Job) -> list[tuple[str, dict[str, Any]]]:
    """The events one state change produces, in the order they are sent."""
    events: list[tuple[str, dict[str, Any]]] = [("job_status", status_payload(job))]
    if job.status == JobStatus.completed:
        events.append(
            (
                "job_completed",
                {
                    "userId": job.user_id,
                    "jobId": job.job_id,
                    "status": "completed",
                    "generatedContent": job.generated_content,
                    "completedAt": iso_ms(job.completed_at or job.updated_at),
                },
            )
        )
    elif job.status == JobStatus.failed:
        events.append(
            (
                "job_failed",
                {
                    "userId": job.user_id,
                    "jobId": job.job_id,
                    "status": "failed",
                    "error": job.error,
                    "failedAt": iso_ms(job.failed_at or job.updated_at),
                },
            )
        )
    return events


class Notifier(Protocol):
    async def job_changed(self, job: Job) -> None:
        """Announce a job's new state to its owner. Never blocks on delivery, never raises."""


class EventPublisher:
    """Hands events to a background task, so a slow Redis or an absent client never
    holds up a request or a job. Delivery is at most once: clients resync with `sync`."""

    def __init__(self, emit: EmitBatch, *, max_pending: int = 10_000, batch: int = 256) -> None:
        self._emit = emit
        self._batch = batch
        self._pending: asyncio.Queue[tuple[str, dict[str, Any], str] | None] = asyncio.Queue(
            max_pending
        )
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.sent = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="smartgen-event-publisher")

    async def job_changed(self, job: Job) -> None:
        self.start()
        room = user_room(job.user_id)
        for event, payload in job_events(job):
            try:
                self._pending.put_nowait((event, payload, room))
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("event queue full: dropped %s for job %s", event, job.job_id)

    async def _run(self) -> None:
        # Everything pending goes out together, in order, in one round trip: one PUBLISH
        # at a time let a busy worker's events fall seconds behind the store.
        stopping = False
        while not stopping:
            item = await self._pending.get()
            batch: list[Event] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= self._batch or self._pending.empty():
                    break
                item = self._pending.get_nowait()
            stopping = item is None
            if not batch:
                continue
            try:
                await self._emit(batch)
                self.sent += len(batch)
            except Exception as exc:  # delivery is best effort; the store stays the truth
                self.dropped += len(batch)
                log.warning("could not publish %d events: %s", len(batch), type(exc).__name__)

    async def close(self, grace: float = 5.0) -> None:
        """Send what is pending (bounded by `grace`), then stop."""
        if self._task is None:
            return
        self._pending.put_nowait(None) if not self._pending.full() else None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None


# A published message carrying several manager messages (`emit_many`); processes that do
# not know it ignore it, as python-socketio ignores any unknown method.
BATCH_METHOD = "smartgen_batch"


def manager_messages(codec: Any, data: bytes | str) -> list[dict[str, Any]]:
    """The manager messages in one published message, decoded once."""
    try:
        decoded = codec.loads(data)
    except ValueError:
        socketio_log.warning("ignoring a pub/sub message that is not JSON")
        return []
    if not isinstance(decoded, dict):
        return []
    if decoded.get("method") == BATCH_METHOD:
        messages = decoded.get("messages")
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    return [decoded]


class RedisManager(AsyncPubSubManager):  # type: ignore[misc]
    """python-socketio's pub/sub client manager over a Redis client we own and close.

    `socketio.AsyncRedisManager` builds a new Redis client on every (re)connect without
    closing the previous one (an emit before the first subscriber leaks a connection), has
    no close, and cannot say when its subscription is live; this one does all three through
    the two methods the base class leaves to backends (`_publish`, `_listen`)."""

    name = "smartgen-redis"

    def __init__(
        self,
        url: str,
        *,
        channel: str,
        write_only: bool,
        redis_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            channel=channel, write_only=write_only, logger=socketio_log, json=jsoncodec
        )
        self.redis_url = url
        self.redis_options = redis_options or {}
        self.redis: aioredis.Redis | None = None
        self.pubsub: PubSub | None = None
        # Set once Redis confirmed our SUBSCRIBE: from then on every publish reaches us.
        self.subscribed = asyncio.Event()
        # How this process's batches begin (`emit_many` writes host_id right after method).
        head = self.json.dumps({"method": BATCH_METHOD, "host_id": self.host_id})
        self._own_prefix = head[:-1].encode() + b","

    def _client(self) -> aioredis.Redis:
        if self.redis is None:  # created lazily, inside the running loop
            self.redis = aioredis.Redis.from_url(self.redis_url, **self.redis_options)
        return self.redis

    async def emit_many(self, events: list[Event]) -> None:
        """Emit to rooms like `emit` (no callbacks, JSON payloads), in order, as one
        published message: every subscribed process decodes it once, not once per event
        (a job makes four events; per-event messages were most of an API's CPU spent on
        relaying them)."""
        messages: list[dict[str, Any]] = []
        for event, payload, room in events:
            message = {
                "method": "emit",
                "event": event,
                "data": [payload],
                "binary": False,
                "namespace": "/",
                "room": room,
                "skip_sid": None,
                "callback": None,
                "host_id": self.host_id,
            }
            if not self.write_only and self.reaches_a_client(message):
                await self._handle_emit(message)  # this process's own clients
            messages.append(message)
        if not messages:
            return
        # host_id first: this process recognises its own batches by their first bytes and
        # skips them undecoded (its clients already had them, above).
        text = self.json.dumps(
            {"method": BATCH_METHOD, "host_id": self.host_id, "messages": messages}
        )
        await self._client().publish(self.channel, text)

    def reaches_a_client(self, message: dict[str, Any]) -> bool:
        """Whether a manager message can reach a client connected to this process.
        python-socketio encodes an event before it looks up the room's participants, so an
        event for a room with none here (its owner is offline, or connected to another API
        process: with N processes that is most events) would be encoded for nobody; such
        an event is skipped here instead. Anything but an emit to one room passes."""
        room = message.get("room")
        if message.get("method") != "emit" or not isinstance(room, str):
            return True
        return bool(self.rooms.get(message.get("namespace") or "/", {}).get(room))

    def _from_this_process(self, data: bytes | str) -> bool:
        raw = data.encode() if isinstance(data, str) else data
        return raw.startswith(self._own_prefix)

    async def _publish(self, data: Any) -> None:
        # redis-py retries connection errors itself; what still fails reaches the caller
        # (the EventPublisher counts it as dropped).
        await self._client().publish(self.channel, self.json.dumps(data))

    async def _listen(self) -> AsyncIterator[Any]:
        channel = self.channel.encode()
        pause = 1.0
        while True:
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
                        if self._from_this_process(message["data"]):
                            continue
                        for item in manager_messages(self.json, message["data"]):
                            if self.reaches_a_client(item):
                                yield item
            except Exception as exc:  # Redis down or restarting: resubscribe with backoff
                self.subscribed.clear()
                socketio_log.warning("Redis subscription lost (%s); retrying in %.0fs", exc, pause)
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
        listener = getattr(self, "thread", None)
        if isinstance(listener, asyncio.Task):
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()  # type: ignore[no-untyped-call]
            self.pubsub = None
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
            self.redis = None
        self.subscribed.clear()


def event_channel(settings: Settings) -> str:
    """The pub/sub channel of one deployment: deployments sharing a Redis (distinct queue
    prefixes or names) never see each other's events."""
    return f"{settings.queue_prefix}:{settings.queue_name}:socketio"


def redis_manager(settings: Settings, *, write_only: bool) -> RedisManager:
    """The Socket.IO manager on the queue's Redis (one source of truth for its address)."""
    return RedisManager(
        settings.redis_connection_url,
        channel=event_channel(settings),
        write_only=write_only,
        redis_options={"socket_connect_timeout": 5, "health_check_interval": 30},
    )


async def close_manager(manager: RedisManager) -> None:
    """Stop the manager's listener and close its Redis connections."""
    await manager.close()


def worker_publisher(settings: Settings) -> tuple[EventPublisher, RedisManager]:
    """The worker's notifier: a write-only Redis manager behind a background publisher."""
    manager = redis_manager(settings, write_only=True)
    return EventPublisher(manager.emit_many), manager


def _handshake_token(environ: dict[str, Any], auth: Any) -> str:
    if isinstance(auth, dict) and auth.get("token"):
        token = str(auth["token"])
        return token[7:].strip() if token.lower().startswith("bearer ") else token
    header = environ.get("HTTP_AUTHORIZATION")
    if header:
        return bearer_token(header)
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if query.get("token"):
        return str(query["token"][0])
    raise Unauthorized(
        "Missing token: send it as auth.token, an Authorization: Bearer header "
        "or a token query parameter",
        code="missing_token",
    )


def _parse_since(data: Any) -> datetime:
    value = data.get("since") if isinstance(data, dict) else data
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000, UTC)  # JavaScript's Date.now()
        if isinstance(value, str) and value.strip():
            return parse_iso(value)
    except (ValueError, OverflowError, OSError):
        pass  # one clear message below, whatever the parser said
    shown = repr(value)[:80]
    raise ValueError(
        f"since must be an ISO 8601 timestamp or milliseconds since the epoch, got {shown}"
    )


class RealtimeServer:
    """The API process's Socket.IO server: handshake auth, rooms, expiry, `sync`."""

    def __init__(
        self,
        settings: Settings,
        tokens: TokenCodec,
        *,
        server_class: type[socketio.AsyncServer] = socketio.AsyncServer,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.store: Store | None = None
        self.manager = redis_manager(settings, write_only=False)
        self.sio = server_class(
            async_mode="asgi",
            client_manager=self.manager,
            json=jsoncodec,
            cors_allowed_origins=settings.cors_origins or None,
            logger=False,
            engineio_logger=False,
        )
        self._expiry: dict[str, asyncio.Task[None]] = {}
        self.publisher = EventPublisher(self._emit_many)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("sync", self._on_sync)

    async def _emit_many(self, events: list[Event]) -> None:
        manager: RedisManager = self.sio.manager
        await manager.emit_many(events)

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            principal = self.tokens.verify(_handshake_token(environ, auth))
        except Unauthorized as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
        delay: float | None = None
        if principal.expires_at is not None:
            delay = (principal.expires_at - datetime.now(UTC)).total_seconds()
            if delay <= 0:  # inside the verifier's clock-skew leeway, but already over
                raise socketio.exceptions.ConnectionRefusedError("Token has expired")
        # This process subscribes to Redis when its first client arrives; hold that
        # client's handshake until the subscription is live, so that an event published
        # after "connected" (by the worker or another API process) is never missed.
        if not await self.manager.wait_subscribed(SUBSCRIBE_WAIT_SECONDS):
            log.warning(
                "Socket.IO: Redis subscription not ready; events from other processes may be missed"
            )
        await self.sio.save_session(sid, {"userId": principal.user_id})
        await self.sio.enter_room(sid, user_room(principal.user_id))
        if delay is not None:  # a connection lives no longer than its token
            self._expiry[sid] = asyncio.create_task(self._expire(sid, delay))

    async def _expire(self, sid: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self._expiry.pop(sid, None)
        # The socket is local to this process: no need to go through Redis.
        with contextlib.suppress(Exception):
            await self.sio.emit(
                "token_expired", {"message": "token has expired"}, to=sid, ignore_queue=True
            )
        with contextlib.suppress(Exception):
            await self.sio.disconnect(sid, ignore_queue=True)

    async def _on_disconnect(self, sid: str, *args: Any) -> None:
        task = self._expiry.pop(sid, None)
        if task is not None:
            task.cancel()

    async def _on_sync(self, sid: str, data: Any = None) -> dict[str, Any]:
        """`sync` {since}: the job_status of the caller's jobs changed since then."""
        try:
            since = _parse_since(data)
        except ValueError as exc:
            return {"error": "bad_request", "message": str(exc)}
        session = await self.sio.get_session(sid)
        if self.store is None:
            return {"error": "service_unavailable", "message": "not ready"}
        try:
            jobs = await self.store.jobs.list_changed_since(
                session["userId"], since, limit=SYNC_LIMIT
            )
        except AppError as exc:
            return {"error": exc.code, "message": exc.message}
        return {
            "jobs": [status_payload(j) for j in jobs],
            "complete": len(jobs) < SYNC_LIMIT,
            "serverTime": iso_ms(datetime.now(UTC)),
        }

    async def close(self) -> None:
        await self.publisher.close()
        for task in self._expiry.values():
            task.cancel()
        self._expiry.clear()
        # Stops Engine.IO's ping-timeout service task (otherwise left running forever).
        with contextlib.suppress(Exception):
            await self.sio.shutdown()
        await close_manager(self.manager)
