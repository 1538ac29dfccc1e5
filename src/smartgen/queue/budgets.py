"""`ports.Budgets` in Redis: each user's month is a hash of tokens and cost (in nano-USD,
integers, so that additions are exact), each job's reservation a hash beside it. Every
operation is one Lua script, so no two API processes can both take the last of a budget,
and a settle or release runs once however often a redelivered job asks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smartgen.errors import QueueUnavailable
from smartgen.ports import BudgetState

P = ParamSpec("P")
R = TypeVar("R")


def _unavailable(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Redis not answering: 503 (the job could not be queued anyway), never a 500."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(
                "The budget ledger (Redis) is unavailable; try again shortly"
            ) from exc

    return wrapper


NANO = 1_000_000_000
KEEP_MS = 70 * 24 * 3600 * 1000  # a month's counters and reservations outlive the month

# KEYS: month, job. ARGV: tokens, cost (nano), token limit, cost limit (0: none), keep ms,
# user id, month name. Returns accepted, tokens before, cost before, tokens after, cost after.
_RESERVE = """
local used_t = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
local used_c = tonumber(redis.call('HGET', KEYS[1], 'cost') or '0')
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, used_t, used_c, used_t, used_c}
end
local t, c = tonumber(ARGV[1]), tonumber(ARGV[2])
local lt, lc = tonumber(ARGV[3]), tonumber(ARGV[4])
if (lt > 0 and used_t + t > lt) or (lc > 0 and used_c + c > lc) then
  return {0, used_t, used_c, used_t, used_c}
end
redis.call('HINCRBY', KEYS[1], 'tokens', t)
redis.call('HINCRBY', KEYS[1], 'cost', c)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('HSET', KEYS[2], 'month', KEYS[1], 'tokens', t, 'cost', c, 'user', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {1, used_t, used_c, used_t + t, used_c + c}
"""

# KEYS: job. ARGV: real tokens, real cost (nano), or '' to keep the reserved number.
# Returns nothing when the job holds no reservation, else before and after as above.
_SETTLE = """
local month = redis.call('HGET', KEYS[1], 'month')
if not month then return nil end
local rt = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
local rc = tonumber(redis.call('HGET', KEYS[1], 'cost'))
local t = ARGV[1] == '' and rt or tonumber(ARGV[1])
local c = ARGV[2] == '' and rc or tonumber(ARGV[2])
local used_t = tonumber(redis.call('HGET', month, 'tokens') or '0')
local used_c = tonumber(redis.call('HGET', month, 'cost') or '0')
redis.call('HINCRBY', month, 'tokens', t - rt)
redis.call('HINCRBY', month, 'cost', c - rc)
redis.call('DEL', KEYS[1])
return {1, used_t, used_c, used_t + t - rt, used_c + c - rc}
"""


# KEYS: job. ARGV: new tokens, new cost (nano), token limit, cost limit (0: none).
# Returns nothing when the job holds no reservation; else as _RESERVE, the reservation
# replaced by the new quote only when the month holds it.
_REQUOTE = """
local month = redis.call('HGET', KEYS[1], 'month')
if not month then return nil end
local rt = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
local rc = tonumber(redis.call('HGET', KEYS[1], 'cost'))
local t, c = tonumber(ARGV[1]), tonumber(ARGV[2])
local lt, lc = tonumber(ARGV[3]), tonumber(ARGV[4])
local used_t = tonumber(redis.call('HGET', month, 'tokens') or '0')
local used_c = tonumber(redis.call('HGET', month, 'cost') or '0')
local new_t, new_c = used_t - rt + t, used_c - rc + c
if (lt > 0 and t > rt and new_t > lt) or (lc > 0 and c > rc and new_c > lc) then
  return {0, used_t, used_c, used_t, used_c}
end
redis.call('HINCRBY', month, 'tokens', t - rt)
redis.call('HINCRBY', month, 'cost', c - rc)
redis.call('HSET', KEYS[1], 'tokens', t, 'cost', c)
return {1, used_t, used_c, new_t, new_c}
"""


def _state(reply: list[int]) -> BudgetState:
    accepted, t0, c0, t1, c1 = (int(v) for v in reply)
    return BudgetState(
        accepted=bool(accepted),
        tokens_used=t1,
        cost_used=c1 / NANO,
        tokens_before=t0,
        cost_before=c0 / NANO,
    )


class RedisBudgets:
    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self._client = client
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._requote = client.register_script(_REQUOTE)
        self._prefix = f"{namespace}:budget"

    def month_key(self, user_id: str, month: str) -> str:
        return f"{self._prefix}:user:{user_id}:{month}"

    def _job_key(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    @_unavailable
    async def reserve(
        self,
        *,
        user_id: str,
        job_id: str,
        month: str,
        tokens: int,
        cost: float,
        token_limit: int,
        cost_limit: float,
    ) -> BudgetState:
        reply = await self._reserve(
            keys=[self.month_key(user_id, month), self._job_key(job_id)],
            args=[
                max(0, tokens),
                max(0, round(cost * NANO)),
                token_limit,
                round(cost_limit * NANO),
                KEEP_MS,
                user_id,
            ],
        )
        return _state(reply)

    @_unavailable
    async def settle(
        self, job_id: str, *, tokens: int | None, cost: float | None
    ) -> BudgetState | None:
        args = [
            "" if tokens is None else max(0, tokens),
            "" if cost is None else max(0, round(cost * NANO)),
        ]
        reply = await self._settle(keys=[self._job_key(job_id)], args=args)
        return None if reply is None else _state(reply)

    @_unavailable
    async def requote(
        self, job_id: str, *, tokens: int, cost: float, token_limit: int, cost_limit: float
    ) -> BudgetState | None:
        reply = await self._requote(
            keys=[self._job_key(job_id)],
            args=[
                max(0, tokens),
                max(0, round(cost * NANO)),
                token_limit,
                round(cost_limit * NANO),
            ],
        )
        return None if reply is None else _state(reply)

    @_unavailable
    async def used(self, user_id: str, month: str) -> tuple[int, float]:
        tokens, cost = await self._client.hmget(self.month_key(user_id, month), ["tokens", "cost"])
        return int(tokens or 0), int(cost or 0) / NANO

    @_unavailable
    async def first_warning(self, user_id: str, month: str, budget: str) -> bool:
        return bool(
            await self._client.hsetnx(self.month_key(user_id, month), f"warned:{budget}", 1)
        )

    @_unavailable
    async def release(self, job_id: str) -> BudgetState | None:
        reply = await self._settle(keys=[self._job_key(job_id)], args=[0, 0])
        return None if reply is None else _state(reply)
