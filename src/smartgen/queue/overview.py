"""What an operator asks of the queue: its jobs by state, how long the oldest waiting job
has waited, and which workers are connected (BullMQ's worker list), for `smartgen status`
and the queue-depth metrics. Read-only, and a handful of Redis calls."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from bullmq import Queue
from redis.exceptions import RedisError

from smartgen.config import Settings
from smartgen.errors import QueueUnavailable

STATES = ("waiting", "delayed", "active", "prioritized", "waiting-children", "failed", "completed")
# runner.py names each worker `smartgen-<host>-<pid>-c<concurrency>`.
_CONCURRENCY = re.compile(r"-c(\d+)$")


@dataclass(frozen=True, slots=True)
class ConnectedWorker:
    name: str
    address: str  # host:port of its connection, as Redis sees it
    concurrency: int | None  # None for a worker that does not say (a Node worker)
    connections: int
    idle_seconds: int  # since its last command (a worker blocked in a wait counts as idle)


@dataclass(slots=True)
class QueueSnapshot:
    counts: dict[str, int] = field(default_factory=dict)
    oldest_waiting_seconds: float | None = None


def worker_name(settings: Settings, host: str, pid: int) -> str:
    return f"smartgen-{host}-{pid}-c{settings.worker_concurrency}"


class QueueOverview:
    """Reads on the generation queue, on a client of its own (`client`, closed with it)."""

    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self._client = client
        self._queue = Queue(
            settings.queue_name, {"connection": client, "prefix": settings.queue_prefix}
        )
        self._timeout = settings.queue_timeout_seconds

    async def snapshot(self) -> QueueSnapshot:
        """Counts by state and the oldest waiting job's wait; `QueueUnavailable` without
        Redis."""
        try:
            async with asyncio.timeout(self._timeout):
                counts = await self._queue.getJobCounts(*STATES)
                oldest = await self._oldest_waiting()
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueUnavailable() from exc
        return QueueSnapshot({s: int(counts.get(s) or 0) for s in STATES}, oldest)

    async def _oldest_waiting(self) -> float | None:
        """Seconds since the job at the head of the wait list became due: its scheduled
        time (added + delay), or the start of its last attempt for a retried job."""
        ids = await self._client.lrange(self._queue.keys["wait"], -1, -1)
        if not ids:
            return None
        key = self._queue.toKey(ids[0])
        timestamp, delay, processed = await self._client.hmget(
            key, ["timestamp", "delay", "processedOn"]
        )
        if not timestamp:
            return None  # removed meanwhile
        due_ms = max(int(timestamp) + int(delay or 0), int(processed or 0))
        return max(0.0, time.time() - due_ms / 1000)

    async def workers(self) -> list[ConnectedWorker]:
        """The workers connected to this queue (one entry per worker, whatever its number
        of connections)."""
        try:
            async with asyncio.timeout(self._timeout):
                clients: list[dict[str, Any]] = await self._queue.get_workers()
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueUnavailable() from exc
        grouped: dict[str, list[dict[str, Any]]] = {}
        for client in clients:
            raw = str(client.get("rawname") or "")
            _, marker, name = raw.partition(":w:")
            if marker:
                grouped.setdefault(name, []).append(client)
        out = []
        for name, conns in sorted(grouped.items()):
            found = _CONCURRENCY.search(name)
            out.append(
                ConnectedWorker(
                    name=name,
                    address=str(conns[0].get("addr") or ""),
                    concurrency=int(found.group(1)) if found else None,
                    connections=len(conns),
                    idle_seconds=min(int(c.get("idle") or 0) for c in conns),
                )
            )
        return out

    async def close(self) -> None:
        await self._queue.close()  # and its client
