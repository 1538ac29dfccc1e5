"""CPU cost of the operations layer per request and per job, in isolation: the outermost
ASGI wrapper (X-Request-ID, log context, HTTP metrics, security headers; `api/edge.py`) around a
do-nothing app, and the job metrics of one job's three announcements
(`metrics/jobs.py`). Prints microseconds of CPU per call, best of `--repeat` runs.

    .venv/bin/python bench/observe_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from smartgen.api.edge import HttpEdge
from smartgen.metrics.jobs import MeteredNotifier
from smartgen.models import Job, JobStatus


async def plain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def discard(message: dict[str, Any]) -> None:
    return None


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/generate-content/x",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer x" * 20)],
    }


async def per_request(app: Any, n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        await app(scope(), receive, discard)
    return (time.process_time() - started) / n * 1e6


class Nothing:
    async def job_changed(self, job: Job, **_: Any) -> None:
        return None


async def per_job(notifier: Any, n: int) -> float:
    now = datetime.now(UTC)
    base = Job("j", "u", JobStatus.queued, "p", "Blog Post Outline", now, now, now)
    states = [
        base,
        Job("j", "u", JobStatus.processing, "p", "Blog Post Outline", now, now, now,
            started_at=now + timedelta(seconds=1), attempts=1),
        Job("j", "u", JobStatus.completed, "p", "Blog Post Outline", now, now, now,
            started_at=now + timedelta(seconds=1), completed_at=now + timedelta(seconds=2),
            attempts=1),
    ]  # fmt: skip
    started = time.process_time()
    for _ in range(n):
        for job in states:
            await notifier.job_changed(job)
    return (time.process_time() - started) / n * 1e6


async def main(n: int, repeat: int) -> None:
    rows = {
        "request, bare app": lambda: per_request(plain_app, n),
        "request, with HttpEdge": lambda: per_request(HttpEdge(plain_app), n),
        "job (3 changes), bare notifier": lambda: per_job(Nothing(), n),
        "job (3 changes), MeteredNotifier": lambda: per_job(MeteredNotifier(Nothing()), n),
    }
    for name, run in rows.items():
        best = min([await run() for _ in range(repeat)])
        print(f"{name:36} {best:7.2f} µs CPU")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.repeat))
