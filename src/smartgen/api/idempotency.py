"""`Idempotency-Key` with Stripe's semantics, for the routes that create work.

The first request with a key (per user) runs, and its successful answer is kept for
IDEMPOTENCY_TTL_SECONDS: the same key with the same body replays that answer (status and
body, header `Idempotent-Replayed: true`) and never runs again; with a different body it is
422 `idempotency_key_reused`; while the first one still runs, 409 `idempotency_key_in_use`.
A request that fails keeps nothing, so the client may simply send it again. Keys live in
Redis (shared by every API process); without Redis such a request is a 503.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import RedisError

from smartgen.errors import Conflict, ServiceUnavailable, ValidationFailed
from smartgen.kit import jsoncodec

MAX_KEY_LENGTH = 255
IN_FLIGHT = "in-flight"
KeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_KEY_LENGTH,
        pattern=r"\S",  # not blank
        description="Send the same key again (with the same body) to get the first answer "
        "back instead of a second job",
    ),
]


def fingerprint(body: BaseModel | None) -> str:
    """What makes two requests with one key on one path "the same": the parsed body."""
    data = body.model_dump(mode="json") if body is not None else None
    return hashlib.sha256(jsoncodec.dumps(data).encode()).hexdigest()


class Idempotency:
    def __init__(self, client: aioredis.Redis, prefix: str, ttl_seconds: float) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_ms = max(1, int(ttl_seconds * 1000))

    def _key(self, user_id: str, key: str, path: str) -> str:
        # A key names one request to one resource: the same key on another path (another
        # job's retry) is another key.
        digest = hashlib.sha256(f"{path}\n{key}".encode()).hexdigest()
        return f"{self._prefix}:idem:{user_id}:{digest}"

    async def run(
        self,
        *,
        user_id: str,
        key: str | None,
        path: str,
        body: BaseModel | None,
        status_code: int,
        produce: Callable[[], Awaitable[BaseModel]],
    ) -> BaseModel | JSONResponse:
        """`produce()` once per key; its answer, or the first answer replayed. The body's
        fingerprint is taken only when there is a key (most requests have none)."""
        if key is None:
            return await produce()
        print_ = fingerprint(body)
        redis_key = self._key(user_id, key, path)
        claim = jsoncodec.dumps({"state": IN_FLIGHT, "fp": print_})
        try:
            claimed = await self._client.set(redis_key, claim, nx=True, px=self._ttl_ms)
            if not claimed:
                return self._replay(await self._client.get(redis_key), print_)
        except (RedisError, OSError, TimeoutError) as exc:
            raise ServiceUnavailable(
                "Idempotency keys (Redis) are unavailable; try again shortly",
                code="idempotency_unavailable",
            ) from exc
        try:
            answer = await produce()
        except BaseException:
            await self._forget(redis_key)
            raise
        done = {
            "state": "done",
            "fp": print_,
            "status": status_code,
            "body": answer.model_dump(mode="json"),
        }
        try:
            await self._client.set(redis_key, jsoncodec.dumps(done), xx=True, px=self._ttl_ms)
        except (RedisError, OSError, TimeoutError):
            await self._forget(redis_key)  # the work is done; only the replay is lost
        return answer

    def _replay(self, stored: Any, print_: str) -> JSONResponse:
        record = jsoncodec.loads(stored) if stored else None
        if not isinstance(record, dict):  # expired between the two calls: a new key
            raise Conflict(
                "This Idempotency-Key expired just now; send the request again",
                code="idempotency_key_in_use",
            )
        if record.get("fp") != print_:
            raise ValidationFailed(
                "This Idempotency-Key was used for a different request; use a new key",
                code="idempotency_key_reused",
                details=[{"field": "Idempotency-Key", "message": "used for another request"}],
            )
        if record.get("state") == IN_FLIGHT:
            raise Conflict(
                "A request with this Idempotency-Key is still running; try again shortly",
                code="idempotency_key_in_use",
                headers={"Retry-After": "1"},
            )
        return JSONResponse(
            record["body"],
            status_code=int(record["status"]),
            headers={"Idempotent-Replayed": "true"},
        )

    async def _forget(self, redis_key: str) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # it expires anyway
            await self._client.delete(redis_key)
