"""The worker's own metrics endpoint: `GET /metrics` (and `GET /healthz`) on HOST:METRICS_PORT,
a small aiohttp server in the worker's loop, with the API's access rule (METRICS_TOKEN)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from smartgen.api.metrics import Scrape, open_scrape
from smartgen.config import Settings
from smartgen.errors import Unauthorized
from smartgen.metrics import exposition

log = logging.getLogger("smartgen.worker")


@dataclass
class MetricsServer:
    runner: web.AppRunner
    scrape: Scrape
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.scrape.close()


async def serve_worker_metrics(settings: Settings) -> MetricsServer | None:
    """Start serving when METRICS_PORT is set (and metrics are on); None otherwise."""
    if settings.metrics_port is None or not settings.metrics_enabled:
        return None
    scrape = open_scrape(settings)

    async def metrics(request: web.Request) -> web.Response:
        try:
            body = await scrape.body(request.headers.get("Authorization"))
        except Unauthorized as exc:
            return web.json_response(
                {"error": exc.code, "message": exc.message}, status=401, headers=exc.headers
            )
        return web.Response(body=body, headers={"Content-Type": exposition.CONTENT_TYPE})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.metrics_port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        await scrape.close()
        raise
    port = runner.addresses[0][1] if runner.addresses else settings.metrics_port
    log.info("worker metrics on http://%s:%d/metrics", settings.host, port)
    return MetricsServer(runner, scrape, int(port))
