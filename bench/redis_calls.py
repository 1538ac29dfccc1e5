"""redis-py's asyncio client, CPU per command with redis-py's own pooled calls and with
smartgen's (`redis_clients.py`, REDIS_LEAN_CALLS): a `GET`, a script call (`EVALSHA`, as
the rate limiter and the event log make) and a two-command pipeline, each by 16 tasks at
once on one client, as the API's requests share it, against a private redis-server,
uvloop as the API and the worker run. Both clients are built by `redis_client` with the
API's settings; rounds alternate which goes first; medians printed.

    .venv/bin/python bench/redis_calls.py --rounds 8 --ops 4000

The figure is the client's CPU (this process), not the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from api_path import private_redis

from smartgen.config import load_settings
from smartgen.redis_clients import redis_client

TASKS = 16
SCRIPT = "return redis.call('INCR', KEYS[1])"


async def measure(port: int, rounds: int, ops: int) -> dict[str, dict[str, list[float]]]:
    clients = {
        lean: redis_client(
            load_settings(
                redis_url=f"redis://127.0.0.1:{port}/0",
                jwt_secret="bench-" + "x" * 40,
                redis_lean_calls=lean,
            ),
            "request",
        )
        for lean in (False, True)
    }
    scripts = {lean: client.register_script(SCRIPT) for lean, client in clients.items()}
    await clients[False].set("calls:x", "1")

    async def get(lean: bool) -> None:
        await clients[lean].get("calls:x")

    async def script(lean: bool) -> None:
        await scripts[lean](keys=["calls:n"])

    async def pipeline(lean: bool) -> None:
        async with clients[lean].pipeline(transaction=False) as pipe:
            pipe.get("calls:x")
            pipe.exists("calls:y")
            await pipe.execute()

    async def run(call: Any, lean: bool, n: int) -> float:
        async def task(count: int) -> None:
            for _ in range(count):
                await call(lean)

        started = time.process_time()
        await asyncio.gather(*(task(n // TASKS) for _ in range(TASKS)))
        return (time.process_time() - started) / (n // TASKS * TASKS) * 1e6

    kinds = {"GET": get, "EVALSHA": script, "pipeline": pipeline}
    results: dict[str, dict[str, list[float]]] = {k: {"stock": [], "lean": []} for k in kinds}
    for call in kinds.values():  # warm-up: connections, the script loaded
        for lean in (False, True):
            await run(call, lean, 800)
    for r in range(rounds):
        for name, call in kinds.items():
            for lean in (False, True) if r % 2 == 0 else (True, False):
                results[name]["lean" if lean else "stock"].append(await run(call, lean, ops))
    await clients[False].delete("calls:x", "calls:n")
    for client in clients.values():
        await client.aclose()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--ops", type=int, default=4000, help="commands per kind per round")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="smartgen-redis-calls-"))
    server, port = private_redis(work)  # api_path's
    try:
        results = uvloop.run(measure(port, args.rounds, args.ops))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"client CPU per command, {TASKS} tasks at once, median of {args.rounds} rounds:")
    print(f"{'command':10} {'redis-py own':>13} {'REDIS_LEAN_CALLS':>17} {'change':>8}")
    for name, paths in results.items():
        stock, lean = statistics.median(paths["stock"]), statistics.median(paths["lean"])
        print(f"{name:10} {stock:>10.1f} µs {lean:>14.1f} µs {100 * (lean - stock) / stock:>7.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
