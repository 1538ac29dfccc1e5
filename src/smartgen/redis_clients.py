"""Redis clients, built one way for every part: the queue, the worker, the event bus and
the rate limiter. Each use gets the timeouts it needs:

- `request`: the API's pooled client (queue adds, rate limits, health): short timeouts and
  few retries, so a dead Redis means a quick 503 rather than a request hanging;
- `blocking`: bullmq's worker connections, with no socket timeout: redis-py 8 defaults it
  to 5 s, which breaks the worker's blocking waits (jobs started long after they were due);
- `pubsub`: the event bus, bytes in and out, kept alive by health checks.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from smartgen.config import Settings

Purpose = Literal["request", "blocking", "pubsub"]


def address(settings: Settings) -> dict[str, Any]:
    """Host, port, credentials, database and TLS from `settings.redis_connection_url`."""
    parts = urlsplit(settings.redis_connection_url)
    db_text = parts.path.lstrip("/")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "db": int(db_text) if db_text.isdigit() else 0,
        "ssl": parts.scheme == "rediss",
    }


def redis_options(settings: Settings, purpose: Purpose) -> dict[str, Any]:
    """redis-py keyword arguments for one use (see the module's docstring)."""
    options = address(settings)
    if purpose == "request":
        timeout = settings.queue_timeout_seconds
        options.update(
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=min(2.0, timeout),
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            health_check_interval=30,
            max_connections=256,
        )
    elif purpose == "blocking":
        options.update(
            socket_timeout=None,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=30,
        )
    else:
        options.update(socket_connect_timeout=5, health_check_interval=30)
    return options


def redis_client(settings: Settings, purpose: Purpose) -> aioredis.Redis:
    """A client for one use; create it inside the running loop and close it on shutdown."""
    return aioredis.Redis(**redis_options(settings, purpose))
