"""/healthz and /readyz."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from smartgen.api.deps import RedisDep, StoreDep
from smartgen.errors import AppError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(store: StoreDep, redis: RedisDep) -> JSONResponse:
    """The store and Redis answer (503 naming the one that does not)."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(store.ping(), 3)
        checks[store.name] = "ok"
    except (AppError, TimeoutError):
        checks[store.name] = "unavailable"
    try:
        await asyncio.wait_for(redis.ping(), 3)
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
