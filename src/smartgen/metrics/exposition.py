"""Serving the metrics: one process's, or every API process's added up; the queue's depth,
read from Redis at most once per `METRICS_QUEUE_CACHE_SECONDS`; access by bearer token.

Several API processes (`API_WORKERS` > 1) share one port, and a scrape reaches whichever
process the dispatcher hands it to, so each process must answer for all of them:
prometheus_client's multiprocess mode. `smartgen api` gives its processes a fresh
directory in `PROMETHEUS_MULTIPROC_DIR` (unless one is set already) and removes a dead
process's live gauges; the process answering a scrape reads every process's files.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
Registry = CollectorRegistry

# What the queue reports: counts by state, and the oldest waiting job's wait (or None).
Depth = tuple[dict[str, int], float | None]


def multiprocess_dir() -> str | None:
    """prometheus_client's own variable (read by it at import): set by `smartgen api` for
    its processes, or by whoever runs them."""
    return os.environ.get(MULTIPROC_ENV) or None


def forget_process(pid: int, path: str) -> None:
    """A process writing to `path` is gone: drop its live gauges (its counters and
    histograms stay, so that totals never go down)."""
    mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class QueueDepth(Collector):
    """`smartgen_queue_jobs{state}`, `smartgen_queue_oldest_waiting_seconds` and
    `smartgen_redis_up`, from a read of the queue cached for `ttl` seconds: scrapes,
    however many, never cost Redis more than one read per `ttl` per process."""

    def __init__(self, read: Callable[[], Awaitable[Depth]], ttl: float) -> None:
        self._read = read
        self._ttl = ttl
        self._at = -float("inf")
        self._depth: Depth | None = None
        self._up = 0
        self._reading: asyncio.Lock | None = None

    async def refresh(self) -> None:
        """Read the queue unless the last read is fresh; never raises."""
        if time.monotonic() - self._at < self._ttl:
            return
        if self._reading is None:
            self._reading = asyncio.Lock()
        async with self._reading:  # concurrent scrapes share one read
            if time.monotonic() - self._at < self._ttl:
                return
            try:
                self._depth = await self._read()
                self._up = 1
            except Exception as exc:  # Redis down: say so, keep serving the rest
                self._depth = None
                self._up = 0
                log.debug("queue depth unavailable: %s", exc)
            self._at = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "smartgen_redis_up", "Whether the queue's Redis answered the last depth read"
        )
        up.add_metric([], self._up)
        yield up
        if self._depth is None:
            return
        counts, oldest = self._depth
        jobs = GaugeMetricFamily(
            "smartgen_queue_jobs", "Jobs in the queue by BullMQ state", labels=["state"]
        )
        for state, count in sorted(counts.items()):
            jobs.add_metric([state], count)
        yield jobs
        wait = GaugeMetricFamily(
            "smartgen_queue_oldest_waiting_seconds",
            "How long the oldest waiting job has been due (0 when none waits)",
        )
        wait.add_metric([], oldest or 0.0)
        yield wait


class _ThisProcess(Collector):
    """The default registry's metrics (this process's only)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition_registry(*extra: Collector) -> CollectorRegistry:
    """What a scrape of this process shows: every process's metrics in multiprocess mode,
    else this process's, plus `extra` collectors."""
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if path:
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    for collector in extra:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def authorized(token: str | None, authorization: str | None) -> bool:
    """Whether a scrape may read the metrics: always without a token, else only with
    `Authorization: Bearer <token>` (compared in constant time)."""
    if not token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
