"""GET /metrics: Prometheus' text format; mounted unless METRICS_ENABLED=false, behind
`Authorization: Bearer METRICS_TOKEN` when that is set. The worker serves the same
(`server/worker_metrics.py`) on METRICS_PORT."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from smartgen.config import Settings
from smartgen.errors import Unauthorized
from smartgen.metrics import exposition
from smartgen.queue.overview import QueueOverview
from smartgen.redis_clients import redis_client

router = APIRouter(tags=["health"])


@dataclass
class Scrape:
    """What answering a scrape takes: the registry to render, the cached queue depth and
    the queue reader behind it (a Redis client of its own, opened on first use)."""

    settings: Settings
    registry: exposition.Registry
    depth: exposition.QueueDepth
    overview: QueueOverview | None = None

    async def read_depth(self) -> exposition.Depth:
        if self.overview is None:
            self.overview = QueueOverview(self.settings, redis_client(self.settings, "request"))
        snapshot = await self.overview.snapshot()
        return snapshot.counts, snapshot.oldest_waiting_seconds

    async def body(self, authorization: str | None) -> bytes:
        if not exposition.authorized(self.settings.metrics_token, authorization):
            raise Unauthorized("Metrics need Authorization: Bearer <METRICS_TOKEN>")
        await self.depth.refresh()
        return exposition.render(self.registry)

    async def close(self) -> None:
        if self.overview is not None:
            await self.overview.close()
            self.overview = None


def open_scrape(settings: Settings) -> Scrape:
    """Create inside the running loop; `close()` on shutdown."""
    scrape: Scrape
    depth = exposition.QueueDepth(lambda: scrape.read_depth(), settings.metrics_queue_cache_seconds)
    scrape = Scrape(settings, exposition.exposition_registry(depth), depth)
    return scrape


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of every API process, and the queue's depth."""
    scrape: Scrape = request.app.state.scrape
    body = await scrape.body(request.headers.get("authorization"))
    return Response(body, media_type=exposition.CONTENT_TYPE)
