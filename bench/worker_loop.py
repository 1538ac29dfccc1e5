"""The worker's queue loop alone: CPU per job of bullmq's loop and of `FetchNextWorker`'s,
by WORKER_CONCURRENCY (issue 19).

    .venv/bin/python bench/worker_loop.py [--jobs 3000] [--concurrency 50,200,1000] [--rounds 3]

A private redis-server; in this process, one worker at a time over `--jobs` jobs queued
beforehand, each held `--hold-ms` by its processor (an `asyncio.sleep`, so that the slots
stay full as they do with model calls in flight) and then completed. No store, no model,
no events: what is measured is the queue's own work per job (bullmq's scripts through
redis-py, and the loop that hands finished tasks on), as this process's CPU time from the
first job taken to the last one completed, divided by the jobs.

Loops, run one after the other in each round (the median of the rounds printed):
- `fetch-next`: `queue.fetch_next.FetchNextWorker` as smartgen runs it (a finished task
  tells the loop by its own callback);
- `fetch-next, bullmq's loop`: the same worker with bullmq's `Worker.run`, which waits with
  `asyncio.wait` over every task in flight at each wake (the loop before this bench);
- `stock`: bullmq's `Worker` (`WORKER_FETCH_NEXT=false`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import bullmq
from harness import Cleanup, Redis, Workspace, log, machine, run_main

from smartgen.queue.fetch_next import FetchNextWorker


class BullmqLoop(FetchNextWorker):  # type: ignore[misc]
    """FetchNextWorker on bullmq's own `run` (asyncio.wait over every task at each wake)."""

    run = bullmq.Worker.run


LOOPS: dict[str, type] = {
    "fetch-next": FetchNextWorker,
    "fetch-next, bullmq's loop": BullmqLoop,
    "stock": bullmq.Worker,
}


async def one_run(
    url: str, name: str, loop: type, jobs: int, concurrency: int, hold: float
) -> float:
    """CPU µs per job of one worker over `jobs` queued jobs."""
    queue = bullmq.Queue(name, {"connection": url})
    try:
        for start in range(0, jobs, 500):
            await queue.addBulk(
                [
                    {"name": "job", "data": {"n": n}, "opts": {"removeOnComplete": True}}
                    for n in range(start, min(jobs, start + 500))
                ]
            )
        done = 0
        finished = asyncio.get_running_loop().create_future()
        started: list[float] = []

        async def process(job: Any, token: str) -> str:
            nonlocal done
            if not started:
                started.append(time.process_time())
            await asyncio.sleep(hold)
            done += 1
            if done == jobs and not finished.done():
                finished.set_result(time.process_time())
            return "ok"

        opts = {"connection": url, "concurrency": concurrency, "autorun": False}
        worker = loop(name, process, opts)
        running = asyncio.ensure_future(worker.run())
        try:
            ended = await asyncio.wait_for(finished, 600)
        finally:
            await worker.close()
            await asyncio.wait_for(running, 30)
        return (ended - started[0]) / jobs * 1e6
    finally:
        await queue.obliterate({"force": True})
        await queue.close()


async def main(cleanup: Cleanup) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", default="50,200,1000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hold-ms", type=float, default=100.0, help="each job's processor wait")
    args = parser.parse_args()
    ws = Workspace(cleanup)
    redis = Redis(ws)
    await redis.start()
    levels = [int(c) for c in args.concurrency.split(",")]
    figures: dict[tuple[str, int], list[float]] = {}
    about = machine()
    log(
        f"{about['nproc']} CPUs, {about['cpu_model']}, Python {about['python']}, "
        f"Redis {about['redis']}; {args.jobs} jobs held {args.hold_ms:g} ms each"
    )
    for r in range(args.rounds):
        for concurrency in levels:
            for label, loop in LOOPS.items():
                name = f"loop-{r}-{concurrency}-{len(figures)}"
                us = await one_run(
                    redis.url, name, loop, args.jobs, concurrency, args.hold_ms / 1000
                )
                figures.setdefault((label, concurrency), []).append(us)
                log(f"round {r + 1}: {label} at {concurrency}: {us:.0f} µs CPU per job")
    print(f"\nworker CPU per job, the queue's work alone (median of {args.rounds} rounds)")
    print(f"{'loop':<28}" + "".join(f"{f'c={c}':>12}" for c in levels))
    for label in LOOPS:
        cells = "".join(f"{statistics.median(figures[(label, c)]):>9.0f} µs" for c in levels)
        print(f"{label:<28}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
