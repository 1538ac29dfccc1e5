"""PyMongo's asyncio client, CPU per operation with its own send and receive (three tasks
and two waits per operation) and with smartgen's (`store/mongo_io.py`, MONGO_LEAN_IO):
`find_one`, `update_one` and `insert_one` against a private SecantusDB (the MongoDB
wire-protocol server the bench runs on), one client, one operation at a time, uvloop as
the API and the worker run. The two are interleaved round by round; medians printed.

    .venv/bin/python bench/mongo_io.py --rounds 8 --ops 1200

The figure is the client's CPU (this process), not the server's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop
from api_path import secantus
from pymongo import AsyncMongoClient

from smartgen.store import mongo_io


async def measure(url: str, rounds: int, ops: int) -> dict[str, dict[str, list[float]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    jobs = client["mongo_io"]["jobs"]
    await jobs.create_index("jobId", unique=True)
    ids = [str(uuid.uuid4()) for _ in range(200)]
    await jobs.insert_many([{"jobId": i, "status": "queued", "n": 0} for i in ids])

    async def find_one(i: int) -> None:
        await jobs.find_one({"jobId": ids[i % len(ids)]})

    async def update_one(i: int) -> None:
        await jobs.update_one({"jobId": ids[i % len(ids)]}, {"$inc": {"n": 1}})

    async def insert_one(i: int) -> None:
        await jobs.insert_one({"jobId": str(uuid.uuid4()), "status": "queued"})

    kinds = {"find_one": find_one, "update_one": update_one, "insert_one": insert_one}
    results: dict[str, dict[str, list[float]]] = {k: {"stock": [], "lean": []} for k in kinds}
    for call in kinds.values():  # warm-up, both paths
        for lean in (False, True):
            mongo_io.lean_io(lean)
            for i in range(100):
                await call(i)
    for r in range(rounds):
        for name, call in kinds.items():
            for lean in (False, True) if r % 2 == 0 else (True, False):
                mongo_io.lean_io(lean)
                started = time.process_time()
                for i in range(ops):
                    await call(i)
                per_op = (time.process_time() - started) / ops * 1e6
                results[name]["lean" if lean else "stock"].append(per_op)
    await client.drop_database("mongo_io")
    await client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--ops", type=int, default=1200, help="operations per kind per round")
    args = parser.parse_args()
    if not mongo_io.lean_io(True):
        print("this PyMongo is laid out otherwise: MONGO_LEAN_IO leaves it alone")
        return 1
    work = Path(tempfile.mkdtemp(prefix="smartgen-mongo-io-"))
    server, url = secantus(work)  # api_path's: a private SecantusDB, its port answering
    try:
        results = uvloop.run(measure(url, args.rounds, args.ops))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"client CPU per operation, median of {args.rounds} interleaved rounds of {args.ops}:")
    print(f"{'operation':12} {'PyMongo own':>12} {'MONGO_LEAN_IO':>14} {'change':>8}")
    for name, paths in results.items():
        stock, lean = statistics.median(paths["stock"]), statistics.median(paths["lean"])
        print(f"{name:12} {stock:>9.0f} µs {lean:>11.0f} µs {100 * (lean - stock) / stock:>7.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
