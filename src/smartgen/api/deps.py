"""Dependencies, one `Annotated` alias per client or concern; a route declares exactly what
it uses. The clients live on the app's state (`Services`, opened in the lifespan).

All are `async def`: FastAPI runs a plain `def` dependency in a worker thread, a thread
hop per dependency per request for work that never blocks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from smartgen.api.ratelimit import Limit
from smartgen.auth.keys import Credentials, require_scope
from smartgen.auth.passwords import HashingSlots
from smartgen.auth.tokens import Principal, TokenCodec, bearer_token
from smartgen.batches.runner import BatchRunner
from smartgen.config import Settings
from smartgen.errors import ServiceUnavailable
from smartgen.kit import logcontext
from smartgen.kit.client_address import ClientAddresses
from smartgen.ports import (
    BatchTurns,
    Budgets,
    EventHistory,
    JobQueue,
    LiveText,
    LoginAttempts,
    Notifier,
    Prices,
    RateLimits,
    RefreshTokens,
    Timings,
    WebhookQueue,
)
from smartgen.store.base import Store

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from smartgen.api.idempotency import Idempotency
    from smartgen.api.ratelimit import RateLimiter
    from smartgen.realtime.log import EventLog
    from smartgen.realtime.sessions import SessionGuard
    from smartgen.realtime.subscribers import LocalSubscribers


@dataclass(slots=True)
class Services:
    """The clients an API process opens at start-up and closes at shutdown."""

    settings: Settings
    store: Store
    queue: JobQueue
    tokens: TokenCodec
    redis: Redis
    notifier: Notifier
    limiter: RateLimiter
    live: LiveText
    log: EventLog
    timings: Timings
    listeners: LocalSubscribers
    sessions: SessionGuard
    attempts: LoginAttempts
    hashing: HashingSlots
    addresses: ClientAddresses
    prices: Prices
    budgets: Budgets
    idempotency: Idempotency
    refresh: RefreshTokens
    credentials: Credentials
    webhook_queue: WebhookQueue
    queueing: Queueing = field(init=False)
    batches: BatchRunner = field(init=False)

    def __post_init__(self) -> None:
        self.batches = BatchRunner(
            store=self.store,
            queue=self.queue,
            notifier=self.notifier,
            settings=self.settings,
            webhook_queue=self.webhook_queue,
        )
        self.queueing = Queueing(
            settings=self.settings,
            store=self.store,
            queue=self.queue,
            notifier=self.notifier,
            timings=self.timings,
            prices=self.prices,
            budgets=self.budgets,
            idempotency=self.idempotency,
            turns=self.batches,
        )


@dataclass(frozen=True, slots=True)
class Queueing:
    """The clients queueing a job uses (POST /generate-content, retry, variations), as one
    dependency built once per process: a shortcut kept here because it is measured. FastAPI
    solves each dependency of each request on its own, about 10 µs of CPU per trivial
    getter on the bench machine; eight of them were a tenth of a POST's CPU
    (bench/HISTORY.md, issue 19). Its fields name what the routes use."""

    settings: Settings
    store: Store
    queue: JobQueue
    notifier: Notifier
    timings: Timings
    prices: Prices
    budgets: Budgets
    idempotency: Idempotency
    turns: BatchRunner


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def get_settings(request: Request) -> Settings:
    return services(request).settings


async def get_store(request: Request) -> Store:
    return services(request).store


async def get_queue(request: Request) -> JobQueue:
    return services(request).queue


async def get_notifier(request: Request) -> Notifier:
    return services(request).notifier


async def get_tokens(request: Request) -> TokenCodec:
    return services(request).tokens


async def get_limiter(request: Request) -> RateLimits:
    return services(request).limiter


async def get_live(request: Request) -> LiveText:
    return services(request).live


async def get_budgets(request: Request) -> Budgets:
    return services(request).budgets


async def get_prices(request: Request) -> Prices:
    return services(request).prices


async def get_redis(request: Request) -> Redis:
    return services(request).redis


async def get_history(request: Request) -> EventHistory:
    return services(request).log


async def get_sessions(request: Request) -> SessionGuard:
    return services(request).sessions


async def get_attempts(request: Request) -> LoginAttempts:
    return services(request).attempts


async def get_hashing(request: Request) -> HashingSlots:
    return services(request).hashing


async def get_turns(request: Request) -> BatchTurns:
    return services(request).batches


async def get_refresh(request: Request) -> RefreshTokens:
    return services(request).refresh


async def get_queueing(request: Request) -> Queueing:
    return services(request).queueing


async def get_webhook_queue(request: Request) -> WebhookQueue:
    return services(request).webhook_queue


async def get_address(request: Request) -> str:
    return client_address(request)


class BearerUser(HTTPBearer):
    """The caller, from `Authorization: Bearer <JWT or API key>`: one dependency that is also the
    Bearer scheme in OpenAPI (the docs' "Authorize" button). The header is parsed by
    `bearer_token` so that every refusal says why."""

    def __init__(self) -> None:
        super().__init__(
            scheme_name="HTTPBearer",
            auto_error=False,
            description="The JWT from /auth/register or /auth/login, or an API key (sg_…)",
        )

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        # Once per request, whichever of the variants below asks first.
        known: Principal | None = request.scope.get(_PRINCIPAL)
        if known is not None:
            return known
        found = services(request)
        header = request.headers.get("authorization")
        principal = await found.credentials.verify(bearer_token(header))
        # Revoked (logout, password change) or its account deleted: refused.
        await found.sessions.check(principal)
        logcontext.user_id.set(principal.user_id)  # the request's log lines name the user
        request.scope[_PRINCIPAL] = principal
        return principal


_PRINCIPAL = "smartgen.principal"


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
NotifierDep = Annotated[Notifier, Depends(get_notifier)]
TokensDep = Annotated[TokenCodec, Depends(get_tokens)]
LimiterDep = Annotated[RateLimits, Depends(get_limiter)]
LiveTextDep = Annotated[LiveText, Depends(get_live)]
RedisDep = Annotated["Redis", Depends(get_redis)]
SessionsDep = Annotated["SessionGuard", Depends(get_sessions)]
HistoryDep = Annotated[EventHistory, Depends(get_history)]
AttemptsDep = Annotated[LoginAttempts, Depends(get_attempts)]
HashingDep = Annotated[HashingSlots, Depends(get_hashing)]
AddressDep = Annotated[str, Depends(get_address)]
BudgetsDep = Annotated[Budgets, Depends(get_budgets)]
PricesDep = Annotated[Prices, Depends(get_prices)]
QueueingDep = Annotated[Queueing, Depends(get_queueing)]
TurnsDep = Annotated[BatchTurns, Depends(get_turns)]
RefreshDep = Annotated[RefreshTokens, Depends(get_refresh)]
WebhookQueueDep = Annotated[WebhookQueue, Depends(get_webhook_queue)]
CurrentUser = Annotated[Principal, Depends(BearerUser())]


class Scoped(BearerUser):
    """The caller, who must hold `scope` when the credential is an API key (`None`: a
    login token only, no key). A `BearerUser` itself, not a dependency on one: FastAPI
    solves every dependency of a request on its own, about 10 µs of CPU each, and this
    is on every authenticated route (`bench/api_path.py --calls`). `required_scope` lets a
    test find every route's scope."""

    def __init__(self, scope: str | None) -> None:
        super().__init__()
        self.required_scope = scope

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        principal = await super().__call__(request)
        require_scope(principal, self.required_scope)
        return principal


# The caller, by what the route needs an API key to allow (a login token allows all).
GenerateUser = Annotated[Principal, Depends(Scoped("generate"))]
ReadUser = Annotated[Principal, Depends(Scoped("read"))]
LibraryUser = Annotated[Principal, Depends(Scoped("library"))]
WebhooksUser = Annotated[Principal, Depends(Scoped("webhooks"))]
SessionUser = Annotated[Principal, Depends(Scoped(None))]


def client_address(request: Request) -> str:
    """The caller's address as a rate-limit key: the TCP peer's, or X-Forwarded-For's
    when the peer is one of TRUSTED_PROXIES (`kit.client_address`)."""
    peer = request.client.host if request.client else None
    forwarded = request.headers.getlist("x-forwarded-for")
    return services(request).addresses.key(peer, forwarded)


# settings -> (limit, window in seconds); a limit of 0 is off.
Rule = Callable[[Settings], tuple[int, float]]


@dataclass(frozen=True, slots=True)
class Counted:
    """One limit a route counts each request against: per authenticated user or per
    client address."""

    bucket: str
    rule: Rule
    per: Literal["user", "address"]


def rate_limit(
    bucket: str,
    rule: Rule,
    *,
    per: Literal["user", "address"],
    fail_open: bool,
    unavailable: ServiceUnavailable | None = None,
) -> Any:
    """A route dependency counting one hit per request in `bucket`, per authenticated user
    or per client address; 429 with `Retry-After` over the limit. Without Redis the request
    passes (`fail_open`) or is refused with `unavailable`."""
    return rate_limits(Counted(bucket, rule, per), fail_open=fail_open, unavailable=unavailable)


_ANY = "*"


def rate_limits(
    *counted: Counted,
    fail_open: bool,
    unavailable: ServiceUnavailable | None = None,
    scope: str | None = _ANY,
) -> Any:
    """One dependency for several limits of a route, checked in order as several
    `rate_limit` dependencies would be (the first over its limit answers 429 and the
    later ones are not counted), in one Redis round trip and one dependency instead of
    one each: a measured shortcut on the busiest route (bench/HISTORY.md, issue 19).
    With `scope` (per-user limits only), the caller's API key scope is checked first, as
    `Scoped(scope)` would, without another dependency (the busiest route's)."""

    async def count(request: Request, user_id: str | None) -> None:
        await _hit(request, counted, user_id, fail_open=fail_open, unavailable=unavailable)

    if any(one.per == "user" for one in counted):

        async def per_user(request: Request, user: CurrentUser) -> None:
            if scope != _ANY:
                require_scope(user, scope)
            await count(request, user.user_id)

        if scope != _ANY:
            per_user.required_scope = scope  # type: ignore[attr-defined]
        return Depends(per_user)

    async def per_address(request: Request) -> None:
        await count(request, None)

    return Depends(per_address)


async def _hit(
    request: Request,
    counted: tuple[Counted, ...],
    user_id: str | None,
    *,
    fail_open: bool,
    unavailable: ServiceUnavailable | None,
) -> None:
    """One hit on each of `counted`'s limits, in one Redis round trip."""
    found = services(request)
    address: str | None = None
    limits = []
    for one in counted:
        limit, window = one.rule(found.settings)
        if one.per == "user":
            key = user_id or ""
        else:
            address = address or client_address(request)
            key = address
        limits.append(Limit(one.bucket, key, limit, window))
    await found.limiter.hit_all(limits, fail_open=fail_open, unavailable=unavailable)


@dataclass(frozen=True, slots=True)
class QueueingCall:
    """What a route that queues a job gets: its caller and the clients queueing uses."""

    user: Principal
    clients: Queueing


class QueueingCaller(Scoped):
    """The routes that queue a job (POST /generate-content, retry, variations): the caller,
    who needs the `generate` scope, its rate limits counted (in order, the first over its
    limit answers 429; without Redis a 503 `unavailable`, since nothing could be queued),
    and the queueing clients, as one dependency instead of three. A shortcut kept here
    because it is measured: a third of the Python calls FastAPI spent solving these
    routes' dependencies (`bench/api_path.py --calls`, bench/HISTORY.md)."""

    def __init__(self, *counted: Counted, unavailable: ServiceUnavailable) -> None:
        super().__init__("generate")
        self.counted = counted
        self.unavailable = unavailable

    async def __call__(self, request: Request) -> QueueingCall:  # type: ignore[override]
        user = await super().__call__(request)
        await _hit(
            request, self.counted, user.user_id, fail_open=False, unavailable=self.unavailable
        )
        return QueueingCall(user, services(request).queueing)
