"""The API process's ASGI application: Socket.IO at /socket.io/, FastAPI for the rest."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import socketio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from smartgen import __version__
from smartgen.api.account import router as account_router
from smartgen.api.deps import Services
from smartgen.api.direct import DirectRoute, NotDirect, direct_routes
from smartgen.api.docs import install_docs
from smartgen.api.edge import HttpEdge
from smartgen.api.handlers import install_error_handlers
from smartgen.api.health import router as health_router
from smartgen.api.idempotency import Idempotency
from smartgen.api.login_attempts import RedisLoginAttempts
from smartgen.api.metrics import open_scrape
from smartgen.api.metrics import router as metrics_router
from smartgen.api.middleware import RequestLimits
from smartgen.api.ratelimit import RateLimiter
from smartgen.api.refresh_tokens import RedisRefreshTokens
from smartgen.api.socket_sessions import SocketSessionLimit
from smartgen.apikeys.router import router as api_keys_router
from smartgen.auth.keys import Credentials
from smartgen.auth.passwords import HashingSlots
from smartgen.auth.router import router as auth_router
from smartgen.auth.tokens import TokenCodec
from smartgen.batches.router import router as batches_router
from smartgen.config import Settings
from smartgen.content.router import router as content_router
from smartgen.content.router import saving as saving_router
from smartgen.generation.router import router as generation_router
from smartgen.kit.client_address import ClientAddresses
from smartgen.llm.pricing import ModelPrices
from smartgen.metrics.jobs import MeteredNotifier
from smartgen.queue.budgets import RedisBudgets
from smartgen.queue.producer import GenerationQueue
from smartgen.queue.timings import RedisTimings
from smartgen.queue.webhooks import BullWebhookQueue
from smartgen.realtime.bus import event_log
from smartgen.realtime.live_text import RedisLiveText
from smartgen.realtime.quota import SocketQuota
from smartgen.realtime.router import router as events_router
from smartgen.realtime.server import RealtimeServer
from smartgen.realtime.sessions import SessionGuard
from smartgen.redis_clients import redis_client
from smartgen.store import open_store
from smartgen.usage.router import router as usage_router
from smartgen.voices.router import router as voices_router
from smartgen.web import install_console
from smartgen.webhooks.notifier import WebhookNotifier
from smartgen.webhooks.router import router as webhooks_router

Asgi = Callable[..., Any]
log = logging.getLogger("smartgen.api")
# The busiest route, served without FastAPI's per-request layers (`api.direct`).
DIRECT = [("POST", "/generate-content")]


class ApiApp:
    """The ASGI callable uvicorn serves, holding its two parts: `http` (FastAPI, whose
    state carries the process's `Services` once started) and `realtime` (Socket.IO)."""

    def __init__(
        self, http: FastAPI, realtime: RealtimeServer, asgi: Asgi, limits: RequestLimits
    ) -> None:
        self.http = http
        self.realtime = realtime
        self.limits = limits  # in front of FastAPI: bodies, HEAD, the direct routes
        self._asgi = asgi

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._asgi(scope, receive, send)


def _telemetry_option(settings: Settings) -> dict[str, Any]:
    """`FastAPI(telemetry=…)` where this FastAPI has native OpenTelemetry: off unless
    OTEL_ENABLED (then FastAPI's defaults: spans, metrics and logs when a provider is set
    up, e.g. by FASTAPI_OTEL_AUTO_CONFIGURE=true and the standard OTEL_* variables).
    While on, every request asks the providers whether anyone listens."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    if settings.otel_enabled:
        return {"telemetry": {}}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def create_app(
    settings: Settings,
    *,
    init_store: bool = True,
    on_started: Callable[[], None] | None = None,
    sio_class: type[socketio.AsyncServer] = socketio.AsyncServer,
    wrap: Callable[[Asgi], Asgi] | None = None,
) -> ApiApp:
    """Build the API. Clients open in the lifespan, which also creates the store's
    schema/indexes unless the caller already did (`init_store=False`), then calls
    `on_started`. `sio_class` and `wrap` let a multi-process server name its Socket.IO
    sessions and route requests between its processes."""
    tokens = TokenCodec(
        settings.require_jwt_secret(),
        expires_minutes=settings.jwt_expires_minutes,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    realtime = RealtimeServer(settings, tokens, server_class=sio_class)
    hashing = HashingSlots(settings.password_hash_concurrency)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        redis = redis_client(settings, "request")
        queue = GenerationQueue(settings, redis)
        webhook_queue = BullWebhookQueue(settings, redis_client(settings, "request"))
        log = event_log(settings, redis)
        namespace = f"{settings.queue_prefix}:smartgen"
        app.state.scrape = scrape = open_scrape(settings) if settings.metrics_enabled else None
        sessions = SessionGuard(redis, settings, store, namespace=namespace)
        refresh = RedisRefreshTokens(
            redis, prefix=namespace, lifetime_seconds=settings.refresh_token_days * 86400
        )
        sessions.also_end_user(refresh.end_user)
        try:
            if init_store:
                await store.init()
            limiter = RateLimiter(redis, prefix=f"{namespace}:rl")
            quota = SocketQuota(redis, prefix=namespace, cap=settings.socketio_max_sockets_per_user)
            credentials = Credentials(tokens, store)
            realtime.attach(
                store=store,
                log=log,
                quota=quota,
                limiter=limiter,
                sessions=sessions,
                credentials=credentials,
            )
            sessions.on_revoked(lambda user_id, *_: realtime.manager.local.wake(user_id))
            sessions.on_revoked(lambda _user_id, token_id, _before: credentials.forget(token_id))
            sessions.start()
            app.state.services = Services(
                settings=settings,
                store=store,
                queue=queue,
                tokens=tokens,
                redis=redis,
                # Cancellations are decided here: their webhooks are announced here.
                notifier=WebhookNotifier(
                    MeteredNotifier(realtime.publisher), store=store, queue=webhook_queue
                ),
                limiter=limiter,
                live=RedisLiveText(redis, namespace),
                log=log,
                timings=RedisTimings(redis, namespace),
                listeners=realtime.manager.local,
                sessions=sessions,
                attempts=RedisLoginAttempts(redis, settings, prefix=f"{namespace}:login"),
                hashing=hashing,
                addresses=ClientAddresses(settings.trusted_proxies),
                prices=ModelPrices(settings),
                budgets=RedisBudgets(redis, namespace),
                idempotency=Idempotency(redis, namespace, settings.idempotency_ttl_seconds),
                refresh=refresh,
                credentials=credentials,
                webhook_queue=webhook_queue,
            )
            if on_started is not None:
                on_started()
            yield
        finally:
            if scrape is not None:
                await scrape.close()
            await sessions.close()
            await realtime.close()
            await queue.close()  # and the Redis client it was given (bullmq closes it)
            await webhook_queue.close()  # likewise
            await store.close()

    app = FastAPI(
        **_telemetry_option(settings),
        title="smartgen",
        version=__version__,
        description=(
            "Queued, asynchronous AI content generation. Queue a job with "
            "`POST /generate-content`, then poll `GET /generate-content/{jobId}` or listen for "
            "the `job_completed` Socket.IO event."
        ),
        lifespan=lifespan,
        # /docs from the installed Swagger UI package, never a CDN (api/docs.py).
        docs_url=None,
        redoc_url=None,
        # No redirect from /path/ to /path: Starlette builds it from the Host header (an
        # open redirect); the path with a slash is a 404 like any unknown path.
        redirect_slashes=False,
        # The docs' order (routes are registered busiest first, below).
        openapi_tags=[
            {"name": "auth", "description": "Register and log in: a JWT for everything else"},
            {"name": "generation", "description": "Queue a generation, follow it, save it"},
            {"name": "content", "description": "Saved content"},
            {"name": "voices", "description": "Brand voices: name one in `voiceId` on a job"},
            {"name": "batches", "description": "Many generations at once, run on the server"},
            {"name": "usage", "description": "Tokens, cost and budgets"},
            {"name": "api-keys", "description": "Personal API keys with scopes, for programs"},
            {"name": "webhooks", "description": "Signed callbacks when jobs end"},
            {"name": "events", "description": "Your event log as server-sent events"},
            {"name": "health", "description": "Liveness and readiness"},
        ],
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            # Every method the API serves: job control is PATCH and DELETE.
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            expose_headers=["Retry-After"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
    install_error_handlers(app)
    # Routes are matched in order: the busiest first.
    app.include_router(generation_router)
    app.include_router(saving_router)
    app.include_router(auth_router)
    app.include_router(account_router)
    app.include_router(content_router)
    app.include_router(voices_router)
    app.include_router(batches_router)
    app.include_router(usage_router)
    app.include_router(api_keys_router)
    app.include_router(webhooks_router)
    app.include_router(events_router)
    app.include_router(health_router)
    if settings.metrics_enabled:
        app.include_router(metrics_router)
    _document_prompt_limit(app, settings)
    install_docs(app)
    install_console(app, settings)

    # Two wrappers: `HttpEdge` around everything (request id, metrics, security headers,
    # the last stop for errors), `RequestLimits` in front of the routes (bodies, HEAD, and
    # the busiest route served without FastAPI's per-request layers: `api.direct`).
    def session_limits() -> tuple[RateLimiter, ClientAddresses] | None:
        found = getattr(app.state, "services", None)
        return None if found is None else (found.limiter, found.addresses)

    limits = RequestLimits(
        app,
        max_body_bytes=settings.max_body_bytes,
        uploads={"/batches": settings.batch_max_upload_bytes},
        direct=_direct(app, settings),
    )
    asgi: Asgi = HttpEdge(
        SocketSessionLimit(
            socketio.ASGIApp(realtime.sio, other_asgi_app=limits),
            path="socket.io",
            limit=settings.socketio_ip_session_rate_limit,
            window_seconds=settings.socketio_ip_session_rate_window_seconds,
            services=session_limits,
        )
    )
    if wrap is not None:
        asgi = wrap(asgi)
    return ApiApp(app, realtime, asgi, limits)


def _direct(app: FastAPI, settings: Settings) -> dict[tuple[str, str], DirectRoute]:
    """The direct routes (API_DIRECT_ROUTES); none, and a warning, when this FastAPI
    describes a route in a way `api.direct` does not serve: FastAPI serves it then."""
    if not settings.api_direct_routes:
        return {}
    try:
        return direct_routes(app, generation_router, DIRECT)
    except NotDirect as exc:
        log.warning("API_DIRECT_ROUTES: served by FastAPI instead (%s)", exc)
        return {}


def _document_prompt_limit(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI schema shows the configured limits (prompt length, longest delay), not
    the hard ceilings the models allow."""
    describe = app.openapi
    limits = {
        "prompt": ("maxLength", settings.prompt_max_chars),
        "delaySeconds": ("maximum", settings.max_delay_seconds),
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = describe()
            models = schema.get("components", {}).get("schemas", {})
            for name in ("GenerationRequest", "JobUpdate"):
                properties = models.get(name, {}).get("properties", {})
                for field, (keyword, value) in limits.items():
                    if field in properties:
                        _limit(properties[field], keyword, value)
            # The models a job may name are the deployment's ALLOWED_MODELS.
            model = models.get("GenerationRequest", {}).get("properties", {}).get("model")
            if model is not None:
                _limit(model, "enum", settings.models_allowed)
        return app.openapi_schema or describe()

    app.openapi = openapi  # type: ignore[method-assign]


def _limit(prop: dict[str, Any], keyword: str, value: float | list[str]) -> None:
    """Set a limit on a property, or on each branch of its `anyOf` (an optional field)."""
    branches = prop.get("anyOf") or [prop]
    for branch in branches:
        if branch.get("type") in ("string", "number", "integer"):
            branch[keyword] = value
