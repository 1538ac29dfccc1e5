"""`smartgen api`: one uvicorn process, or API_WORKERS of them on one port (`sticky.py`)."""

from __future__ import annotations

import logging

import uvicorn

from smartgen.api.app import create_app
from smartgen.config import Settings
from smartgen.server import heap
from smartgen.server.http import exit_quietly_after_a_graceful_stop, uvicorn_config
from smartgen.server.startup import check_api_settings, preflight_store

log = logging.getLogger("smartgen.api")


def run_api(settings: Settings) -> int:
    from smartgen.server.sticky import StickyWorker, run_worker_api, serve_workers

    worker = StickyWorker.from_env()
    if worker is not None:  # one process of a multi-process API, started by the dispatcher
        return run_worker_api(settings, worker)
    check_api_settings(settings)
    preflight_store(settings)  # the schema and indexes, once, before serving
    if settings.api_workers > 1:
        return serve_workers(settings, settings.api_workers)
    app = create_app(settings, init_store=False, on_started=heap.settle_heap)
    server = uvicorn.Server(uvicorn_config(app, settings, host=settings.host, port=settings.port))
    log.info(
        "API on http://%s:%d (docs at /docs), Socket.IO at /socket.io/",
        settings.host,
        settings.port,
    )
    exit_quietly_after_a_graceful_stop()
    server.run()
    return 0 if server.started else 1
