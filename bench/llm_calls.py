"""The model call alone: client CPU per call of smartgen's `ChatClient` (aiohttp, one pooled
session) against the bench's fake model server (`llmserver.py`, its own process, 0 ms),
streamed as the worker asks, `--concurrency` calls at once (the worker's slots) and one
at a time; medians of `--rounds` rounds printed.

    .venv/bin/python bench/llm_calls.py [--calls 400] [--concurrency 50] [--rounds 5]

The figure is this process's CPU (request built, sent, answer read and parsed, the
completion checked and redacted), not the server's: the share of a worker's CPU per job
that its model call takes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import uvloop
from api_path import answering, free_port

from smartgen.config import Settings
from smartgen.llm.client import ChatClient

MESSAGES = [
    {"role": "system", "content": "You write blog post outlines."},
    {"role": "user", "content": "Bees in the city: why rooftop hives are everywhere now"},
]


async def measure(port: int, calls: int, concurrency: int, rounds: int) -> dict[str, list[float]]:
    settings = Settings(
        base_url=f"http://127.0.0.1:{port}/v1", openrouter_key="bench", llm_provider="openai"
    )
    client = ChatClient(settings)

    async def one() -> None:
        async for _ in client.stream(MESSAGES):
            pass

    async def slot(n: int) -> None:
        for _ in range(n):
            await one()

    results: dict[str, list[float]] = {f"{concurrency} at once": [], "one at a time": []}
    try:
        await asyncio.gather(*(slot(4) for _ in range(concurrency)))  # warm-up: the pool
        for _ in range(rounds):
            started = time.process_time()
            per_slot = max(1, calls // concurrency)
            await asyncio.gather(*(slot(per_slot) for _ in range(concurrency)))
            done = per_slot * concurrency
            results[f"{concurrency} at once"].append((time.process_time() - started) / done)
            started = time.process_time()
            await slot(calls // 2)
            results["one at a time"].append((time.process_time() - started) / (calls // 2))
    finally:
        await client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per round")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("llmserver.py")), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        answering(port, seconds=30)
        results = uvloop.run(measure(port, args.calls, args.concurrency, args.rounds))
    finally:
        server.terminate()
        server.wait()
    print(f"client CPU per model call (ChatClient.stream), median of {args.rounds} rounds:")
    for name, values in results.items():
        shown = ", ".join(f"{v * 1e6:.0f}" for v in values)
        print(f"{name:14} {statistics.median(values) * 1e6:6.0f} µs   (rounds: {shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
