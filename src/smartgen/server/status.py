"""`smartgen status`: what an operator asks first, read from the configured Redis and store.

The queue's jobs by state and how long the oldest waiting job has waited, the workers
connected to the queue (BullMQ's worker list) with their concurrency, jobs stuck in
`processing` past their lease (their worker died or hangs), and whether Redis and the
store answer. `--json` prints one document; the exit code is 1 when something needs
attention (listed under `attention`), else 0.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Any

from smartgen.config import Settings
from smartgen.errors import AppError
from smartgen.kit.times import iso_ms, utcnow
from smartgen.queue.overview import QueueOverview
from smartgen.redis_clients import redis_client
from smartgen.store import describe_store, open_store

STUCK_LIMIT = 100
CHECK_TIMEOUT_SECONDS = 5.0


def _problem(exc: BaseException) -> str:
    if isinstance(exc, AppError):
        return exc.message
    return str(exc) or type(exc).__name__


async def _store_part(settings: Settings, now: datetime) -> tuple[dict[str, Any], list[Any]]:
    store = open_store(settings)
    part: dict[str, Any] = {"name": store.name, "address": describe_store(settings)}
    stuck: list[Any] = []
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await store.ping()
            jobs = await store.jobs.list_past_lease(now, limit=STUCK_LIMIT)
        part["status"] = "ok"
        stuck = [
            {
                "jobId": job.job_id,
                "startedAt": iso_ms(job.started_at) if job.started_at else None,
                "leaseUntil": iso_ms(job.lease_until) if job.lease_until else None,
                "pastLeaseSeconds": round((now - (job.lease_until or now)).total_seconds(), 1),
                "attempts": job.attempts,
            }
            for job in jobs
        ]
    except (AppError, OSError, TimeoutError) as exc:
        part.update(status="unavailable", error=_problem(exc))
    finally:
        await store.close()
    return part, stuck


async def _redis_part(settings: Settings) -> dict[str, Any]:
    part: dict[str, Any] = {"address": settings.redis_display}
    overview = QueueOverview(settings, redis_client(settings, "request"))
    try:
        snapshot = await overview.snapshot()
        workers = await overview.workers()
        part.update(status="ok")
        part["queue"] = {
            "name": settings.queue_name,
            "prefix": settings.queue_prefix,
            "counts": snapshot.counts,
            "oldestWaitingSeconds": (
                None
                if snapshot.oldest_waiting_seconds is None
                else round(snapshot.oldest_waiting_seconds, 1)
            ),
        }
        part["workers"] = [asdict(w) for w in workers]
    except AppError as exc:
        part.update(status="unavailable", error=_problem(exc))
    finally:
        await overview.close()
    return part


async def collect_status(settings: Settings, *, max_wait_seconds: float) -> dict[str, Any]:
    """Everything `smartgen status` reports, and what needs attention."""
    now = utcnow()
    (store, stuck), redis = await asyncio.gather(_store_part(settings, now), _redis_part(settings))
    attention: list[str] = []
    if redis["status"] != "ok":
        attention.append(f"Redis does not answer: {redis.get('error')}")
    else:
        if not redis["workers"]:
            attention.append("no worker is connected to the queue")
        oldest = redis["queue"]["oldestWaitingSeconds"]
        if oldest is not None and oldest > max_wait_seconds:
            attention.append(
                f"the oldest waiting job has waited {oldest:.0f} s (more than "
                f"{max_wait_seconds:g} s): workers are saturated or stuck"
            )
    if store["status"] != "ok":
        attention.append(f"the store does not answer: {store.get('error')}")
    elif stuck:
        more = "+" if len(stuck) >= STUCK_LIMIT else ""
        attention.append(f"{len(stuck)}{more} jobs stuck in processing past their lease")
    return {
        "at": iso_ms(now),
        "redis": {k: v for k, v in redis.items() if k not in ("queue", "workers")},
        "store": store,
        "queue": redis.get("queue"),
        "workers": redis.get("workers", []),
        "stuck": stuck,
        "attention": attention,
        "ok": not attention,
    }


def render_text(report: dict[str, Any]) -> str:
    lines = []
    redis, store = report["redis"], report["store"]
    lines.append(f"redis    {redis['address']}: {redis['status']}")
    lines.append(f"store    {store['address']}: {store['status']}")
    queue = report["queue"]
    if queue:
        counts = ", ".join(f"{k} {v}" for k, v in queue["counts"].items())
        oldest = queue["oldestWaitingSeconds"]
        waited = "none waiting" if oldest is None else f"{oldest:.1f} s"
        lines.append(f"queue    {queue['prefix']}:{queue['name']}: {counts}")
        lines.append(f"oldest waiting job: {waited}")
        lines.append(f"workers  {len(report['workers'])} connected")
        for w in report["workers"]:
            concurrency = "?" if w["concurrency"] is None else w["concurrency"]
            lines.append(f"  {w['name']}  {w['address']}  concurrency {concurrency}")
    if store["status"] == "ok":
        lines.append(f"stuck in processing past their lease: {len(report['stuck']) or 'none'}")
        for job in report["stuck"][:20]:
            lines.append(
                f"  {job['jobId']}  started {job['startedAt']}, lease ran out "
                f"{job['pastLeaseSeconds']:.0f} s ago, attempt {job['attempts']}"
            )
    if report["attention"]:
        lines.append("attention:")
        lines.extend(f"  - {item}" for item in report["attention"])
    else:
        lines.append("all good")
    return "\n".join(lines)


def run_status(settings: Settings, *, as_json: bool, max_wait_seconds: float) -> int:
    report = asyncio.run(collect_status(settings, max_wait_seconds=max_wait_seconds))
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_text(report))
    return 0 if report["ok"] else 1
