"""The web console's refresh tokens, in Redis (`ports.RefreshTokens`).

A token is `<family>.<secret>`: 96 random bits naming its family (one sign-in) and 256
random bits of secret. Redis keeps only its SHA-256 (`…:rt:tok:<hash>` → family, user,
spent), the family (`…:rt:fam:<family>` → user) and the user's families
(`…:rt:user:<id>`), each expiring REFRESH_TOKEN_DAYS after the family's last use.

Rotation is one Lua script, so two requests with the same token cannot both succeed: the
first spends it and gets its successor; any later use of a spent token ends the family,
successors included (whoever holds a copy, thief or owner, must sign in again: OAuth 2.0
Security BCP, refresh token rotation). Why Redis rather than the store: README, Design."""

from __future__ import annotations

import hashlib
import re
import secrets

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smartgen.errors import ServiceUnavailable, Unauthorized
from smartgen.ports import RefreshGrant

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
_TOKEN = re.compile(r"^([A-Za-z0-9_-]{16})\.[A-Za-z0-9_-]{43}$")

# KEYS: old token, its family, new token, the user's families; ARGV: ttl, family
_ROTATE = """
local rec = redis.call('HMGET', KEYS[1], 'family', 'user', 'spent')
if not rec[1] or rec[1] ~= ARGV[2] then return {'unknown'} end
if rec[3] == '1' then
  redis.call('DEL', KEYS[2])
  return {'reused', rec[2]}
end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'ended', rec[2]} end
redis.call('HSET', KEYS[1], 'spent', '1')
redis.call('HSET', KEYS[3], 'family', rec[1], 'user', rec[2], 'spent', '0')
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[4] .. rec[2], ARGV[1])
return {'ok', rec[2]}
"""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RedisRefreshTokens:
    def __init__(self, client: aioredis.Redis, *, prefix: str, lifetime_seconds: float) -> None:
        self._redis = client
        self._tok = f"{prefix}:rt:tok:"
        self._fam = f"{prefix}:rt:fam:"
        self._user = f"{prefix}:rt:user:"
        self._ttl = max(1, int(lifetime_seconds))
        self._rotate = client.register_script(_ROTATE)

    async def start(self, user_id: str) -> RefreshGrant:
        family = secrets.token_urlsafe(12)
        token = f"{family}.{secrets.token_urlsafe(32)}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._fam + family, user_id, ex=self._ttl)
                pipe.hset(
                    self._tok + _digest(token),
                    mapping={"family": family, "user": user_id, "spent": "0"},
                )
                pipe.expire(self._tok + _digest(token), self._ttl)
                pipe.sadd(self._user + user_id, family)
                pipe.expire(self._user + user_id, self._ttl)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise _unavailable() from exc
        return RefreshGrant(token=token, user_id=user_id, family=family)

    async def rotate(self, token: str) -> RefreshGrant:
        match = _TOKEN.match(token or "")
        if match is None:
            raise Unauthorized("Malformed refresh token; sign in again", code="refresh_invalid")
        family = match[1]
        successor = f"{family}.{secrets.token_urlsafe(32)}"
        try:
            answer = await self._rotate(
                keys=[
                    self._tok + _digest(token),
                    self._fam + family,
                    self._tok + _digest(successor),
                    self._user,
                ],
                args=[self._ttl, family],
            )
        except REDIS_ERRORS as exc:
            raise _unavailable() from exc
        outcome = _text(answer[0])
        if outcome == "ok":
            return RefreshGrant(token=successor, user_id=_text(answer[1]), family=family)
        if outcome == "reused":
            raise Unauthorized(
                "This refresh token was already used: the session has ended everywhere it "
                "was copied to; sign in again",
                code="refresh_reused",
            )
        raise Unauthorized("This session has ended; sign in again", code="refresh_invalid")

    async def end(self, token: str) -> None:
        match = _TOKEN.match(token or "")
        if match is None:
            return
        try:
            found = await self._redis.hmget(self._tok + _digest(token), ["family", "user"])
            if found[0] is None or found[1] is None or _text(found[0]) != match[1]:
                return
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._fam + match[1])
                pipe.srem(self._user + _text(found[1]), match[1])
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise _unavailable() from exc

    async def end_user(self, user_id: str) -> None:
        try:
            families = await self._redis.smembers(self._user + user_id)
            async with self._redis.pipeline(transaction=True) as pipe:
                for family in families:
                    pipe.delete(self._fam + _text(family))
                pipe.delete(self._user + user_id)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise _unavailable() from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Console sessions are unavailable while Redis is; try again shortly",
        code="sessions_unavailable",
    )
