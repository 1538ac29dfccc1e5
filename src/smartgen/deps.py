"""Dependencies, each declared once as an `Annotated` alias.

All are `async def`: FastAPI runs a plain `def` dependency in a worker thread, a thread
hop per dependency per request for work that never blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from smartgen.auth.tokens import Principal, TokenCodec, bearer_token
from smartgen.config import Settings
from smartgen.store.base import Store

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from smartgen.limits import RateLimiter
    from smartgen.queue import GenerationQueue
    from smartgen.realtime import Notifier


@dataclass(slots=True)
class Runtime:
    """The clients an API process opens at start-up and closes at shutdown."""

    settings: Settings
    store: Store
    queue: GenerationQueue
    tokens: TokenCodec
    redis: Redis
    notifier: Notifier
    limiter: RateLimiter


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@dataclass(slots=True)
class Caller:
    """An authenticated request's caller, with the process's clients: what every route
    behind a token needs, from one dependency (each dependency FastAPI solves costs the
    request CPU time; the authenticated routes need only this one)."""

    principal: Principal
    rt: Runtime

    @property
    def user_id(self) -> str:
        return self.principal.user_id


class BearerUser(HTTPBearer):
    """The caller, from `Authorization: Bearer <JWT>`: one dependency that is also the
    Bearer scheme in OpenAPI (the docs' "Authorize" button). The header is parsed by
    `bearer_token` so that every refusal says why."""

    def __init__(self) -> None:
        super().__init__(
            scheme_name="HTTPBearer",
            auto_error=False,
            description="The JWT from /auth/register or /auth/login",
        )

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        runtime: Runtime = request.app.state.runtime
        principal = runtime.tokens.verify(bearer_token(request.headers.get("authorization")))
        return Caller(principal, runtime)


current_caller = BearerUser()

CurrentCaller = Annotated[Caller, Depends(current_caller)]
