"""What every process checks before it serves: logging, the settings it needs, the store."""

from __future__ import annotations

import asyncio
import logging
import sys

from smartgen.config import Settings
from smartgen.kit.logcontext import JsonFormatter, TextFormatter
from smartgen.kit.redaction import install_log_redaction
from smartgen.store import open_store


def setup_logging(level: str, log_format: str = "text") -> None:
    """Lines on stderr: human-readable, or one JSON object each (`LOG_FORMAT=json`, with
    the request's, user's and job's ids from `kit.logcontext`)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    install_log_redaction()  # tokens never reach a log line, uvicorn's access log included
    # Third-party chatter stays at warning level unless asked for debug.
    if level.lower() != "debug":
        for name in ("httpx", "httpcore", "pymongo", "socketio.server", "engineio.server"):
            logging.getLogger(name).setLevel(logging.WARNING)


def check_api_settings(settings: Settings) -> None:
    """`ConfigError` naming the first setting the API cannot start without."""
    settings.require_jwt_secret()


def preflight_store(settings: Settings) -> None:
    """Open the store and bring its schema/indexes up to date before serving, so an
    unreachable database is one clear line and exit code 3, not a traceback."""

    async def check() -> None:
        store = open_store(settings)
        try:
            await store.init()
        finally:
            await store.close()

    asyncio.run(check())
