"""Revoked sessions and deleted accounts, known to every API process at once.

Revocations live in Redis: a revoked token's `jti` as a key that expires with the token,
and per user a mark "tokens issued before T are refused" (password change; account
deletion marks every token and the user as gone), kept for a token's lifetime. A
revocation is also published on one channel; every API process listens and updates its
small in-process cache at once, and disconnects the sockets and event streams of the
revoked sessions. The cache is a cache, not the truth: entries are read again from Redis
after `REVOCATION_REFRESH_SECONDS` (a missed message is corrected by then), the user's
existence after `USER_CHECK_CACHE_SECONDS`, and a lost subscription empties it.

Without Redis, tokens keep working on what the process last knew (signatures and expiry
are still checked): refusing every request while Redis restarts would be worse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smartgen.auth.tokens import Principal
from smartgen.config import Settings
from smartgen.errors import ServiceUnavailable, Unauthorized
from smartgen.redis_clients import redis_client
from smartgen.store.base import Store

log = logging.getLogger("smartgen.api")
CACHE_SIZE = 8192
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
# (user id, revoked token id or None, tokens issued before this are revoked)
Revoked = Callable[[str, str | None, float], None]


class SessionGuard:
    def __init__(
        self, client: aioredis.Redis, settings: Settings, store: Store, *, namespace: str
    ) -> None:
        self._redis = client
        self._settings = settings
        self._store = store
        self.channel = f"{namespace}:revocations"
        self._jti = f"{namespace}:revoked:jti:"
        self._user = f"{namespace}:revoked:user:"
        self._token_lifetime = settings.jwt_expires_minutes * 60
        # jti -> (revoked, read at); user id -> (revoked before, exists, read at)
        self._tokens: dict[str, tuple[bool, float]] = {}
        self._users: dict[str, tuple[float, bool, float]] = {}
        self._listeners: list[Revoked] = []
        self._user_hooks: list[Callable[[str], Awaitable[None]]] = []
        self._pending: dict[tuple[str, str | None, bool], asyncio.Future[Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    # --- checking ------------------------------------------------------------------------
    async def check(self, principal: Principal) -> None:
        """`Unauthorized` when the token was revoked or its user no longer exists."""
        now = time.monotonic()
        user_id, jti = principal.user_id, principal.token_id
        user = self._users.get(user_id)
        token = self._tokens.get(jti) if jti else None
        user_stale = user is None or now - user[2] > self._settings.user_check_cache_seconds
        token_stale = jti is not None and (
            token is None or now - token[1] > self._settings.revocation_refresh_seconds
        )
        if user_stale or token_stale:
            # Requests of the same session arriving together share one read.
            key = (user_id, jti, user_stale)
            pending = self._pending.get(key)
            if pending is None:
                pending = asyncio.ensure_future(
                    self._read(user_id, jti, user, token, now, user_stale)
                )
                self._pending[key] = pending
                pending.add_done_callback(lambda done: self._settled(key, done))
            user, token = await asyncio.shield(pending)
        self._refuse_if_revoked(principal, user, token)

    def _settled(self, key: tuple[str, str | None, bool], done: asyncio.Future[Any]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: its waiters may all have gone

    def revoked_now(self, principal: Principal) -> bool:
        """What this process knows right now, without asking anyone."""
        user = self._users.get(principal.user_id)
        token = self._tokens.get(principal.token_id) if principal.token_id else None
        try:
            self._refuse_if_revoked(principal, user, token)
        except Unauthorized:
            return True
        return False

    @staticmethod
    def _refuse_if_revoked(
        principal: Principal,
        user: tuple[float, bool, float] | None,
        token: tuple[bool, float] | None,
    ) -> None:
        if user is not None and not user[1]:
            raise Unauthorized("This token's user no longer exists", code="invalid_token")
        # A password change ends login sessions; API keys are revoked one by one.
        if (
            user is not None
            and user[0] > 0
            and principal.key_id is None
            and (principal.issued_at or 0) < user[0]
        ):
            raise Unauthorized("This session has ended; log in again", code="token_revoked")
        if token is not None and token[0]:
            raise Unauthorized("This session has ended; log in again", code="token_revoked")

    async def _read(
        self,
        user_id: str,
        jti: str | None,
        user: tuple[float, bool, float] | None,
        token: tuple[bool, float] | None,
        now: float,
        user_stale: bool,
    ) -> tuple[tuple[float, bool, float] | None, tuple[bool, float] | None]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._user + user_id)
                if jti:
                    pipe.exists(self._jti + jti)
                answers = await pipe.execute()
        except REDIS_ERRORS as exc:
            log.debug("revocations unavailable (Redis): %s", type(exc).__name__)
            answers = None
        if answers is not None and jti:
            token = self._keep(self._tokens, jti, (bool(answers[1]), now))
        before, deleted = (user[0], not user[1]) if user is not None else (0.0, False)
        if answers is not None:
            before, deleted = _parse_mark(answers[0])
        if user_stale:
            exists = not deleted and await self._store.users.get(user_id) is not None
            user = self._keep(self._users, user_id, (before, exists, now))
        elif user is not None and answers is not None:  # the mark as just read
            user = self._keep(self._users, user_id, (before, user[1] and not deleted, user[2]))
        # A revocation message that arrived during the reads is in the caches: it wins.
        return self._users.get(user_id, user), self._tokens.get(jti, token) if jti else token

    @staticmethod
    def _keep(cache: dict[str, Any], key: str, value: Any) -> Any:
        """Cache what was read, unless a revocation message arrived while it was read (its
        entry is newer than the read's start): that one is the truth."""
        current = cache.get(key)
        if current is not None and current[-1] > value[-1]:
            return current
        _put(cache, key, value)
        return value

    # --- revoking (ports.Revocations) ---------------------------------------------------
    async def revoke_token(self, user_id: str, token_id: str, *, expires_at: datetime) -> None:
        remaining = int((expires_at - datetime.now(UTC)).total_seconds()) + 60
        await self._write(self._jti + token_id, "1", max(remaining, 60))
        self._revoked_here(user_id, token_id, 0.0, deleted=False)
        await self._publish(f"t {user_id} {token_id}")

    async def revoke_user(self, user_id: str, *, before: float, deleted: bool = False) -> None:
        mark = f"{before!r}{' deleted' if deleted else ''}"
        await self._write(self._user + user_id, mark, self._token_lifetime + 60)
        self._revoked_here(user_id, None, before, deleted=deleted)
        await self._publish(f"u {user_id} {mark}")
        for hook in self._user_hooks:
            await hook(user_id)

    def also_end_user(self, hook: Callable[[str], Awaitable[None]]) -> None:
        """Await `hook(user_id)` whenever all of a user's sessions end here (the console's
        refresh tokens end with them)."""
        self._user_hooks.append(hook)

    async def _write(self, key: str, value: str, seconds: int) -> None:
        try:
            await self._redis.set(key, value, ex=seconds)
        except REDIS_ERRORS as exc:  # nothing was revoked: say so, change nothing else
            raise ServiceUnavailable(
                "Sessions cannot be ended while Redis is unavailable; try again shortly",
                code="sessions_unavailable",
            ) from exc

    async def _publish(self, message: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):  # the mark is in Redis: others read it soon
            await self._redis.publish(self.channel, message)

    def _revoked_here(self, user_id: str, jti: str | None, before: float, *, deleted: bool) -> None:
        now = time.monotonic()
        if jti is not None:
            _put(self._tokens, jti, (True, now))
        else:
            _put(self._users, user_id, (before, not deleted, now))
        for listener in list(self._listeners):
            try:
                listener(user_id, jti, float("inf") if deleted else before)
            except Exception:  # a listener's failure never stops a revocation
                log.exception("revocation listener failed")

    def on_revoked(self, listener: Revoked) -> None:
        """Call `listener(user_id, jti, before)` for each revocation, from any process."""
        self._listeners.append(listener)

    # --- listening ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        client = redis_client(self._settings, "pubsub")
        pause = 1.0
        try:
            while True:
                pubsub = client.pubsub()
                try:
                    await pubsub.subscribe(self.channel)
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe":
                            # Messages may have been missed while not subscribed.
                            self._tokens.clear()
                            self._users.clear()
                            self.subscribed.set()
                            pause = 1.0
                        elif message["type"] == "message":
                            self._apply(message["data"])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.subscribed.clear()
                    log.warning("revocations: subscription lost (%s); retrying", exc)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 30.0)
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    def _apply(self, data: bytes | str) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        kind, _, rest = text.partition(" ")
        user_id, _, value = rest.partition(" ")
        if not user_id or not value:
            return
        if kind == "t":
            self._revoked_here(user_id, value, 0.0, deleted=False)
        elif kind == "u":
            before, deleted = _parse_mark(value)
            self._revoked_here(user_id, None, before, deleted=deleted)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _parse_mark(value: str | bytes | None) -> tuple[float, bool]:
    """(revoked before, deleted) from a user's mark, "<time>[ deleted]"."""
    if value is None:
        return 0.0, False
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    first, _, flag = value.partition(" ")
    try:
        before = float(first)
    except ValueError:
        before = 0.0
    return before, flag == "deleted"


def _put(cache: dict[str, tuple[object, ...]] | dict, key: str, value: tuple) -> None:  # type: ignore[type-arg]
    cache.pop(key, None)
    if len(cache) >= CACHE_SIZE:
        cache.pop(next(iter(cache)))  # the oldest first (dicts keep insertion order)
    cache[key] = value
