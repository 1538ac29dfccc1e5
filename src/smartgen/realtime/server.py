"""The API process's Socket.IO server: handshake auth, the owner's room, expiry with the
token, and `sync`. Events reach it through the bus (`bus.py`) from every process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import socketio
from redis.exceptions import RedisError

from smartgen.auth.keys import Credentials, require_scope
from smartgen.auth.tokens import Principal, TokenCodec, bearer_token
from smartgen.config import Settings
from smartgen.errors import AppError, TooManyRequests, Unauthorized
from smartgen.kit import jsoncodec
from smartgen.kit.times import iso_ms, parse_iso
from smartgen.metrics import catalog
from smartgen.ports import RateLimits
from smartgen.realtime.bus import RedisManager, close_manager, redis_manager
from smartgen.realtime.engineio_asgi import compact_sio_class
from smartgen.realtime.events import (
    Event,
    EventPublisher,
    seq_room,
    status_payload,
    user_room,
)
from smartgen.realtime.log import EventLog
from smartgen.realtime.quota import SocketQuota
from smartgen.realtime.sessions import SessionGuard
from smartgen.store.base import Store

log = logging.getLogger(__name__)

SYNC_LIMIT = 500
# How long a handshake may wait for this process's Redis subscription (first client only):
# a client that was told "connected" must not miss an event published right after.
SUBSCRIBE_WAIT_SECONDS = 5.0


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
        self.manager: RedisManager = redis_manager(settings, write_only=False)
        if settings.socketio_compact_connections:
            server_class = compact_sio_class(server_class)
        self.sio = server_class(
            async_mode="asgi",
            client_manager=self.manager,
            json=jsoncodec,
            cors_allowed_origins=settings.cors_origins or None,
            logger=False,
            engineio_logger=False,
        )
        # sid -> the timer that ends it with its token (a timer, not a sleeping task:
        # a task per idle connection held about 1 KB more).
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self.manager.local.when_ready(self._listen_for_streams)
        self.log: EventLog | None = None
        self.quota: SocketQuota | None = None
        self.limiter: RateLimits | None = None
        # Engine.IO sessions waiting for their Socket.IO CONNECT (closed when it is late).
        self._handshakes: dict[str, asyncio.Task[None]] = {}
        self._watch_engineio_sessions()
        self._connected: set[str] = set()  # counted in smartgen_socketio_connections
        self.sessions: SessionGuard | None = None
        self.credentials: Credentials | None = None
        # user id -> sid -> the token it connected with (to end revoked sessions)
        self._principals: dict[str, dict[str, Principal]] = {}
        self._sid_user: dict[str, str] = {}
        self._ending: set[asyncio.Future[None]] = set()
        self.publisher = EventPublisher(self._emit_many, relay=self.manager)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("sync", self._on_sync)

    def attach(
        self,
        *,
        store: Store,
        log: EventLog,
        quota: SocketQuota | None = None,
        limiter: RateLimits | None = None,
        sessions: SessionGuard | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """The process's store and event log, once the lifespan opened them; the per-user
        socket count and the rate limiter for `sync`, when there are; `sessions` refuses
        revoked tokens at the handshake and ends their sockets later; `credentials`
        accepts API keys (with the `read` scope) as well as tokens."""
        self.store = store
        self.credentials = credentials
        self.log = log
        self.quota = quota
        self.limiter = limiter
        self.sessions = sessions
        if sessions is not None:
            sessions.on_revoked(self._revoked)
        self.publisher.number_with(log)
        self.publisher.start()

    async def _listen_for_streams(self) -> bool:
        """`GET /events` needs the bus as much as a socket does, but python-socketio
        subscribes only when its first Engine.IO client connects: without a socket in this
        process, a stream's wake-ups never came and it saw events only at its heartbeats."""
        if not self.sio.manager_initialized:
            self.sio.manager_initialized = True
            self.sio.manager.initialize()
        return await self.manager.wait_subscribed(SUBSCRIBE_WAIT_SECONDS)

    def _watch_engineio_sessions(self) -> None:
        """An Engine.IO session must send its Socket.IO CONNECT within
        SOCKETIO_CONNECT_TIMEOUT_SECONDS, else it is closed: a session costs memory and a
        ping task, and one that never connects (or whose every CONNECT was refused) only
        holds them."""
        eio = self.sio.eio
        opened, closed = self.sio._handle_eio_connect, self.sio._handle_eio_disconnect

        async def on_open(eio_sid: str, environ: dict[str, Any]) -> Any:
            result = await opened(eio_sid, environ)
            self._handshakes[eio_sid] = asyncio.create_task(self._require_connect(eio_sid))
            return result

        async def on_close(eio_sid: str, *args: Any) -> Any:
            task = self._handshakes.pop(eio_sid, None)
            if task is not None:
                task.cancel()
            return await closed(eio_sid, *args)

        eio.on("connect", on_open)
        eio.on("disconnect", on_close)

    async def _require_connect(self, eio_sid: str) -> None:
        await asyncio.sleep(self.settings.socketio_connect_timeout_seconds)
        self._handshakes.pop(eio_sid, None)
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is not None and sid in self._connected:
            return  # connected (a refused CONNECT may leave its sid behind: not enough)
        log.info("Socket.IO: closing an Engine.IO session that sent no CONNECT in time")
        socket = self.sio.eio.sockets.get(eio_sid)
        with contextlib.suppress(Exception):
            await self.sio.eio.disconnect(eio_sid)
        if socket is not None:
            # Engine.IO sends its close packet and then waits for the client to hang up (up
            # to ping interval + timeout); an empty item ends its writer, which closes the
            # websocket now (python-engineio's AsyncSocket.poll: None is "no more").
            with contextlib.suppress(Exception):
                socket.queue.put_nowait(None)

    async def _emit_many(self, events: list[Event]) -> None:
        await self.manager.emit_many(events)

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            credential = _handshake_token(environ, auth)
            if self.credentials is not None:
                principal = await self.credentials.verify(credential)
            else:
                principal = self.tokens.verify(credential)
            require_scope(principal, "read")
        except AppError as exc:  # 401, 403 (a key without `read`), 503 (the store)
            raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
        delay: float | None = None
        if principal.expires_at is not None:
            delay = (principal.expires_at - datetime.now(UTC)).total_seconds()
            if delay <= 0:  # inside the verifier's clock-skew leeway, but already over
                raise socketio.exceptions.ConnectionRefusedError("Token has expired")
        if self.sessions is not None:  # revoked, or its account deleted
            try:
                await self.sessions.check(principal)
            except AppError as exc:  # 401, or 503 when the store does not answer
                raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
        # This process subscribes to Redis when its first client arrives; hold that
        # client's handshake until the subscription is live, so that an event published
        # after "connected" (by the worker or another API process) is never missed.
        if not await self.manager.wait_subscribed(SUBSCRIBE_WAIT_SECONDS):
            log.warning(
                "Socket.IO: Redis subscription not ready; events from other processes may be missed"
            )
        if self.quota is not None and not await self.quota.take(principal.user_id, sid):
            cap = self.quota.cap
            raise socketio.exceptions.ConnectionRefusedError(
                f"Too many connections: at most {cap} sockets per user "
                "(SOCKETIO_MAX_SOCKETS_PER_USER); close another one first",
                {"error": "too_many_sockets"},
            )
        try:
            await self.sio.save_session(sid, {"userId": principal.user_id})
            room = user_room(principal.user_id)
            # `auth: {token, seq: true}`: `seq` in every payload, the seed's `job_completed`
            # included (another room, so that the seed's clients keep its exact payload).
            numbered = isinstance(auth, dict) and auth.get("seq") is True
            await self.sio.enter_room(sid, seq_room(room) if numbered else room)
        except BaseException:
            if self.quota is not None:  # never connected: no disconnect will count it out
                await self.quota.release(sid)
            raise
        self._connected.add(sid)
        self._principals.setdefault(principal.user_id, {})[sid] = principal
        self._sid_user[sid] = principal.user_id
        catalog.SOCKETIO_CONNECTIONS.inc()
        if delay is not None:  # a connection lives no longer than its token
            loop = asyncio.get_running_loop()
            self._expiry[sid] = loop.call_later(delay, self._expired, sid)

    def _expired(self, sid: str) -> None:
        if self._expiry.pop(sid, None) is not None:
            task = asyncio.ensure_future(self._expire(sid))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def _expire(self, sid: str) -> None:
        # The socket is local to this process: no need to go through Redis.
        with contextlib.suppress(Exception):
            await self.sio.emit(
                "token_expired", {"message": "token has expired"}, to=sid, ignore_queue=True
            )
        with contextlib.suppress(Exception):
            await self.sio.disconnect(sid, ignore_queue=True)

    def _revoked(self, user_id: str, token_id: str | None, before: float) -> None:
        """A session ended (in any process): disconnect its sockets here."""
        for sid, principal in list(self._principals.get(user_id, {}).items()):
            if (token_id is not None and principal.token_id == token_id) or (
                token_id is None and (principal.issued_at or 0) < before
            ):
                task = asyncio.ensure_future(self._end_session(sid))
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)

    async def _end_session(self, sid: str) -> None:
        with contextlib.suppress(Exception):
            await self.sio.emit(
                "session_ended", {"message": "this session has ended"}, to=sid, ignore_queue=True
            )
        with contextlib.suppress(Exception):
            await self.sio.disconnect(sid, ignore_queue=True)

    async def _on_disconnect(self, sid: str, *args: Any) -> None:
        if self.quota is not None:
            await self.quota.release(sid)
        user_id = self._sid_user.pop(sid, None)
        sids = self._principals.get(user_id) if user_id is not None else None
        if sids is not None:
            sids.pop(sid, None)
            if not sids:
                del self._principals[user_id]  # type: ignore[arg-type]
        if sid in self._connected:
            self._connected.discard(sid)
            catalog.SOCKETIO_CONNECTIONS.dec()
        timer = self._expiry.pop(sid, None)
        if timer is not None:
            timer.cancel()

    async def _on_sync(self, sid: str, data: Any = None) -> dict[str, Any]:
        """`sync` {since}: the job_status of the caller's jobs changed since then;
        `sync` {afterSeq}: the caller's events after that number, from the event log.
        At most SOCKETIO_SYNC_RATE_LIMIT per user per SOCKETIO_SYNC_RATE_WINDOW_SECONDS."""
        refused = await self._sync_refused(sid)
        if refused is not None:
            return refused
        if isinstance(data, dict) and "afterSeq" in data:
            return await self._replay(sid, data["afterSeq"])
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

    async def _sync_refused(self, sid: str) -> dict[str, Any] | None:
        """The answer to a `sync` over the caller's limit, else None (counted)."""
        if self.limiter is None:
            return None
        session = await self.sio.get_session(sid)
        try:
            await self.limiter.hit(
                "sync",
                str(session.get("userId")),
                limit=self.settings.socketio_sync_rate_limit,
                window_seconds=self.settings.socketio_sync_rate_window_seconds,
                fail_open=True,
            )
        except TooManyRequests as exc:
            retry_after = (exc.headers or {}).get("Retry-After")
            return {
                "error": exc.code,
                "message": exc.message,
                "retryAfter": int(retry_after) if retry_after else None,
            }
        return None

    async def _replay(self, sid: str, after: Any) -> dict[str, Any]:
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            shown = repr(after)[:80]
            return {
                "error": "bad_request",
                "message": f"afterSeq must be a whole number of 0 or more, got {shown}",
            }
        if self.log is None:
            return {"error": "service_unavailable", "message": "not ready"}
        session = await self.sio.get_session(sid)
        try:
            replay = await self.log.read(session["userId"], after, limit=SYNC_LIMIT)
        except (RedisError, OSError, TimeoutError):
            return {
                "error": "service_unavailable",
                "message": "The event log (Redis) is unavailable; try again shortly",
            }
        return {
            "events": [e.as_dict() for e in replay.events],
            "complete": replay.complete,
            "lastSeq": replay.last_seq,
            "serverTime": iso_ms(datetime.now(UTC)),
        }

    async def close(self) -> None:
        await self.publisher.close()
        for waiting in self._handshakes.values():
            waiting.cancel()
        self._handshakes.clear()
        if self.quota is not None:
            await self.quota.close()
        for timer in self._expiry.values():
            timer.cancel()
        self._expiry.clear()
        catalog.SOCKETIO_CONNECTIONS.dec(len(self._connected))  # sessions end with us
        self._connected.clear()
        # Stops Engine.IO's ping-timeout service task (otherwise left running forever).
        with contextlib.suppress(Exception):
            await self.sio.shutdown()
        await close_manager(self.manager)
