"""Personal API keys as credentials: their format, their hash, and the per-process
resolver that turns `sg_…` into a `Principal` with the key's scopes.

A key is `sg_` and 32 random bytes in base64url; the store keeps only its SHA-256 (a
256-bit random secret needs no slow hash). The resolver remembers looked-up keys for
`CACHE_SECONDS`: revocation does not wait for that, since deleting a key also revokes
`key:<id>` as a session (`realtime/sessions.py`: a Redis mark and a pub/sub message every
API process applies at once), and each process drops its copy when told (`forget`)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Final

from smartgen.auth.tokens import Principal, TokenCodec
from smartgen.errors import Forbidden, StoreUnavailable, Unauthorized
from smartgen.models import ApiKey
from smartgen.store.base import Store

KEY_PREFIX: Final = "sg_"
KEY_BYTES: Final = 32
# The characters of a key shown in listings after `sg_`: enough to tell keys apart.
SHOWN_CHARS: Final = 8
_KEY_SHAPE: Final = re.compile(r"^sg_[A-Za-z0-9_-]{43,128}$")
# How long a process trusts a key it looked up; how often it records a key's use.
CACHE_SECONDS: Final = 60.0
TOUCH_SECONDS: Final = 60.0
CACHE_SIZE: Final = 4096
TOKEN_ID_PREFIX: Final = "key:"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def shown_prefix(key: str) -> str:
    return key[len(KEY_PREFIX) : len(KEY_PREFIX) + SHOWN_CHARS]


def token_id(key_id: str) -> str:
    """The session id a key's revocation goes by."""
    return TOKEN_ID_PREFIX + key_id


def is_api_key(credential: str) -> bool:
    return credential.startswith(KEY_PREFIX)


def require_scope(principal: Principal, scope: str | None) -> None:
    """`Forbidden` (insufficient_scope) unless the caller may use a route needing `scope`
    (None: a login session only). A login token may do everything."""
    if principal.scopes is None:
        return
    if scope is None:
        raise Forbidden(
            "API keys cannot do this (keys, password, account, logout): use a login token",
            code="insufficient_scope",
        )
    if scope not in principal.scopes:
        raise Forbidden(f"This API key lacks the {scope!r} scope", code="insufficient_scope")


class Credentials:
    """A bearer credential (a login JWT or an API key) → the `Principal` it speaks for."""

    def __init__(self, tokens: TokenCodec, store: Store) -> None:
        self.tokens = tokens
        self._store = store
        # key hash → (key, its principal, read at); key id → last recorded use
        self._keys: dict[str, tuple[ApiKey, Principal, float]] = {}
        self._touched: dict[str, float] = {}

    async def verify(self, credential: str) -> Principal:
        if not is_api_key(credential):
            return self.tokens.verify(credential)
        if not _KEY_SHAPE.match(credential):
            raise Unauthorized("Malformed API key", code="invalid_token")
        digest = key_hash(credential)
        now = time.monotonic()
        known = self._keys.get(digest)
        if known is None or now - known[2] > CACHE_SECONDS:
            key = await self._store.api_keys.get_by_hash(digest)
            if key is None:
                self._keys.pop(digest, None)
                raise Unauthorized("Unknown or revoked API key", code="invalid_token")
            known = (key, _principal(key), now)
            if len(self._keys) >= CACHE_SIZE:
                self._keys.pop(next(iter(self._keys)))
            self._keys[digest] = known
        key, principal = known[0], known[1]
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            raise Unauthorized("This API key has expired", code="token_expired")
        await self._touch(key, now)
        return principal

    async def _touch(self, key: ApiKey, now: float) -> None:
        """Record the use at most once per TOUCH_SECONDS per key and process."""
        last = self._touched.get(key.key_id)
        if last is not None and now - last < TOUCH_SECONDS:
            return
        if len(self._touched) >= CACHE_SIZE:
            self._touched.pop(next(iter(self._touched)))
        self._touched[key.key_id] = now
        with contextlib.suppress(StoreUnavailable):  # a missed mark is no reason to refuse
            await self._store.api_keys.touch(key.key_id, at=datetime.now(UTC))

    def forget(self, revoked_token_id: str | None) -> None:
        """Drop a revoked key (named by its session id) from this process's memory."""
        if not revoked_token_id or not revoked_token_id.startswith(TOKEN_ID_PREFIX):
            return
        key_id = revoked_token_id[len(TOKEN_ID_PREFIX) :]
        for digest, (key, _, _) in list(self._keys.items()):
            if key.key_id == key_id:
                del self._keys[digest]


def _principal(key: ApiKey) -> Principal:
    return Principal(
        user_id=key.user_id,
        expires_at=key.expires_at,
        token_id=token_id(key.key_id),
        scopes=frozenset(key.scopes),
        key_id=key.key_id,
    )
