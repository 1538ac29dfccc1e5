"""The API process: FastAPI routes and the Socket.IO server on one port."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import socketio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from smartgen import __version__, heap
from smartgen.auth.router import router as auth_router
from smartgen.auth.tokens import TokenCodec
from smartgen.config import Settings
from smartgen.content.router import router as content_router
from smartgen.deps import Runtime
from smartgen.errors import AppError
from smartgen.generation.router import router as generation_router
from smartgen.limits import RateLimiter, RequestLimits
from smartgen.queue import GenerationQueue, api_redis
from smartgen.realtime import RealtimeServer
from smartgen.sticky import StickyForward, StickyWorker, sticky_sio_class
from smartgen.store import open_store

log = logging.getLogger(__name__)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse(
            {"error": "invalid_json", "message": "Request body is not valid JSON"}, status_code=400
        )
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
        return JSONResponse(
            {"error": "invalid_json", "message": "Request body must be a JSON object"},
            status_code=400,
        )
    details = []
    for e in errors:
        message = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            message = "unknown field"
        elif e.get("type") == "missing":
            message = "required"
        elif e.get("type") == "value_error":  # our validators' own words, not pydantic's prefix
            message = str((e.get("ctx") or {}).get("error") or message)
        details.append({"field": _field(e.get("loc", ())), "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return JSONResponse(
        {"error": "validation_error", "message": f"Invalid request: {summary}", "details": details},
        status_code=422,
    )


def _allowed_methods(request: Request) -> set[str]:
    """Every method the app serves at this path, from its OpenAPI description."""
    app: FastAPI = request.app
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path):
            methods.update(m.upper() for m in operations)
    if "GET" in methods:
        methods.add("HEAD")
    return methods


def _telemetry_option(settings: Settings) -> dict[str, Any]:
    """`FastAPI(telemetry=…)` where this FastAPI has native OpenTelemetry: off unless
    OTEL_ENABLED (then FastAPI's defaults: spans, metrics and logs when a provider is set
    up, e.g. by FASTAPI_OTEL_AUTO_CONFIGURE=true and the standard OTEL_* variables)."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    if settings.otel_enabled:
        return {"telemetry": {}}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; list them all.
            methods = sorted(_allowed_methods(request))
            if methods:
                headers["Allow"] = ", ".join(methods)
        return JSONResponse(
            {"error": codes.get(exc.status_code, "http_error"), "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=headers or None,
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse(
            {"error": "internal_error", "message": "Internal server error"}, status_code=500
        )


def create_app(
    settings: Settings,
    *,
    init_store: bool = True,
    settle_heap: bool = False,
    sticky: StickyWorker | None = None,
) -> Any:
    """Build the ASGI application (HTTP + Socket.IO). Clients open in the lifespan, which
    also creates the store's schema/indexes unless the caller already did
    (`init_store=False`, as `smartgen api` does after its start-up check), and, with
    `settle_heap`, freezes the start-up objects for the garbage collector (`heap.py`).
    `sticky`: this process is one worker of a multi-process API (`sticky.py`)."""
    tokens = TokenCodec(
        settings.require_jwt_secret(),
        expires_minutes=settings.jwt_expires_minutes,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    server_class = socketio.AsyncServer if sticky is None else sticky_sio_class(sticky.index)
    realtime = RealtimeServer(settings, tokens, server_class=server_class)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        redis = api_redis(settings)
        queue = GenerationQueue(settings, redis)
        try:
            if init_store:
                await store.init()
            realtime.store = store
            realtime.publisher.start()
            app.state.runtime = Runtime(
                settings=settings,
                store=store,
                queue=queue,
                tokens=tokens,
                redis=redis,
                notifier=realtime.publisher,
                limiter=RateLimiter(redis, prefix=f"{settings.queue_prefix}:smartgen:rl"),
            )
            if settle_heap:
                heap.settle_heap()
            yield
        finally:
            await realtime.close()
            await queue.close()
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
        # The docs' order (routes are registered busiest first, below).
        openapi_tags=[
            {"name": "auth", "description": "Register and log in: a JWT for everything else"},
            {"name": "generation", "description": "Queue a generation, follow it, save it"},
            {"name": "content", "description": "Saved content"},
            {"name": "health", "description": "Liveness and readiness"},
        ],
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            expose_headers=["Retry-After"],
            allow_headers=["Authorization", "Content-Type"],
        )
    _install_error_handlers(app)
    # Routes are matched in order: the busiest first.
    app.include_router(generation_router)
    app.include_router(auth_router)
    app.include_router(content_router)

    describe = app.openapi

    def openapi() -> dict[str, Any]:
        # Document the configured prompt limit, not the model's hard ceiling.
        if app.openapi_schema is None:
            schema = describe()
            body = schema.get("components", {}).get("schemas", {}).get("GenerationRequest", {})
            if "prompt" in body.get("properties", {}):
                body["properties"]["prompt"]["maxLength"] = settings.prompt_max_chars
        return app.openapi_schema or describe()

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """MongoDB and Redis answer (503 naming the one that does not)."""
        rt: Runtime = request.app.state.runtime
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(rt.store.ping(), 3)
            checks[rt.store.name] = "ok"
        except (AppError, TimeoutError):
            checks[rt.store.name] = "unavailable"
        try:
            await asyncio.wait_for(rt.redis.ping(), 3)
            checks["redis"] = "ok"
        except (RedisError, OSError, TimeoutError):
            checks["redis"] = "unavailable"
        down = [name for name, state in checks.items() if state != "ok"]
        if down:
            return JSONResponse(
                {
                    "error": "not_ready",
                    "message": f"Not ready: {', '.join(down)} unavailable",
                    "checks": checks,
                },
                status_code=503,
            )
        return JSONResponse({"status": "ready", "checks": checks})

    limited = RequestLimits(app, max_body_bytes=settings.max_body_bytes)
    asgi: Any = socketio.ASGIApp(realtime.sio, other_asgi_app=limited)
    if sticky is not None:
        asgi = StickyForward(asgi, sticky)
    asgi.fastapi_app = app  # for tools and tests that need the app's state
    asgi.realtime = realtime
    return asgi
