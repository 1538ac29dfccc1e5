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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop
from pymongo import AsyncMongoClient

from smartgen.store import mongo_io


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(port: int, rounds: int, ops: int) -> dict[str, dict[str, list[float]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(f"mongodb://127.0.0.1:{port}/")
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
    work = tempfile.mkdtemp(prefix="smartgen-mongo-io-")
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("secantusd-py")), "--standalone",
         "--host", "127.0.0.1", "--port", str(port), "--storage-path", work,
         "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        results = uvloop.run(measure(port, args.rounds, args.ops))
    finally:
        server.terminate()
        server.wait()
    print(f"client CPU per operation, median of {args.rounds} interleaved rounds of {args.ops}:")
    print(f"{'operation':12} {'PyMongo own':>12} {'MONGO_LEAN_IO':>14} {'change':>8}")
    for name, paths in results.items():
        stock, lean = statistics.median(paths["stock"]), statistics.median(paths["lean"])
        print(f"{name:12} {stock:>9.0f} µs {lean:>11.0f} µs {100 * (lean - stock) / stock:>7.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
