"""Real-time figures: notification latency and the API's memory per idle connection.

    .venv/bin/python bench/realtime.py [--clients 1000] [--jobs 1000] [--idle 5000] [--quick]

1. Latency: `--clients` Socket.IO clients (one per user, websocket) on ONE API process; a
   worker process completes `--jobs` jobs (0 ms fake LLM) for those users. Latency is the
   client's receipt of `job_completed` minus the job's `completedAt` (the timestamp the
   worker writes to the store just before publishing), so it spans: store write → Redis
   publish → API process → websocket → client. Same machine, same clock; `completedAt` has
   millisecond precision.
2. Memory: the API's RSS idle, then with `--idle` idle websocket connections held by
   helper processes (1,000 each); the difference per connection.

Starts its own Redis, SQLite store, fake LLM and smartgen processes; cleans up on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import harness as h

HOLD_PER_PROCESS = 1000


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class LatencyClient:
    def __init__(self, url: str, user: h.User) -> None:
        import socketio

        self.url = url
        self.user = user
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.latencies_ms: list[float] = []
        self.sio.on("job_completed", self._completed)

    async def _completed(self, data: dict[str, Any]) -> None:
        received = time.time()
        completed = datetime.fromisoformat(data["completedAt"].replace("Z", "+00:00"))
        self.latencies_ms.append((received - completed.timestamp()) * 1000)

    async def connect(self) -> None:
        await self.sio.connect(
            self.url, auth={"token": self.user.token}, transports=["websocket"], wait_timeout=30
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.disconnect(), 5)


async def hold(url: str, tokens: list[str]) -> None:
    """Helper process: hold idle connections until stdin closes (tokens came on its
    first line)."""
    import socketio

    clients = [socketio.AsyncClient(reconnection=False, handle_sigint=False) for _ in tokens]
    semaphore = asyncio.Semaphore(50)

    async def one(client: Any, token: str) -> None:
        async with semaphore:
            await client.connect(url, auth={"token": token}, transports=["websocket"])

    await asyncio.gather(*(one(c, t) for c, t in zip(clients, tokens, strict=True)))
    print("held", len(clients), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


async def submit(url: str, users: list[h.User], jobs: int, rate: float) -> list[str]:
    """Queue `jobs` jobs round-robin over users at about `rate` per second."""
    ids: list[str] = []
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        for i in range(jobs):
            user = users[i % len(users)]
            body = {"prompt": f"latency {i}", "contentType": "Social Media Caption"}
            async with session.post(
                url + "/generate-content", json=body, headers=user.headers
            ) as r:
                data = await r.json()
                if r.status != 202:
                    raise RuntimeError(f"queue: HTTP {r.status}: {data}")
                ids.append(data["jobId"])
            ahead = start + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    return ids


async def run(args: argparse.Namespace) -> dict[str, Any]:
    h.raise_fd_limit()
    cleanup = h.Cleanup()
    ws = h.Workspace(cleanup)
    results: dict[str, Any] = {"machine": h.machine(), "plan": vars(args)}
    try:
        redis = h.Redis(ws)
        llm = h.FakeLLM(ws, latency_ms=0)
        await asyncio.gather(redis.start(), llm.start())
        store = h.SqliteBackend(ws)
        secret = secrets.token_hex(32)
        env = h.smartgen_env(
            redis_url=redis.url,
            store_env=await store.database("realtime"),
            llm_base_url=llm.base_url,
            jwt_secret=secret,
            queue_prefix="rt" + secrets.token_hex(3),
            MAX_UNFINISHED_JOBS="0",
        )
        system = h.Smartgen(ws, env)
        api, url = await system.api()
        await system.worker(WORKER_CONCURRENCY="50")

        # 1. latency with N connected clients on one API process
        users = h.mint_users(secret, args.clients)
        await h.create_accounts(env, users)
        clients = [LatencyClient(url, u) for u in users]
        semaphore = asyncio.Semaphore(50)

        async def connect(client: LatencyClient) -> None:
            async with semaphore:
                await client.connect()

        t0 = time.monotonic()
        await asyncio.gather(*(connect(c) for c in clients))
        connect_s = time.monotonic() - t0
        await submit(url, users, args.jobs, args.rate)
        deadline = time.monotonic() + 60
        while sum(len(c.latencies_ms) for c in clients) < args.jobs:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        latencies = [v for c in clients for v in c.latencies_ms]
        await asyncio.gather(*(c.close() for c in clients))
        results["latency"] = {
            "clients": args.clients,
            "jobs": args.jobs,
            "received": len(latencies),
            "connect_seconds": round(connect_s, 2),
            "p50_ms": _round(h.percentile(latencies, 50)),
            "p99_ms": _round(h.percentile(latencies, 99)),
            "max_ms": _round(max(latencies) if latencies else None),
        }

        # 2. API memory with idle connections
        await asyncio.sleep(2)
        idle_before = rss_mb(api.pid)
        holders = []
        idle_users = h.mint_users(secret, args.idle)
        await h.create_accounts(env, idle_users)
        tokens = [u.token for u in idle_users]
        for start in range(0, len(tokens), HOLD_PER_PROCESS):
            chunk = tokens[start : start + HOLD_PER_PROCESS]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--hold", url,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(chunk).encode() + b"\n")  # the tokens, one line
            await proc.stdin.drain()
            holders.append(proc)
        for proc in holders:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 180)
            if not line.startswith(b"held"):
                raise RuntimeError("a helper could not connect its clients")
        await asyncio.sleep(3)
        with_idle = rss_mb(api.pid)
        for proc in holders:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in holders:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
        results["memory"] = {
            "idle_connections": args.idle,
            "api_rss_idle_mb": round(idle_before, 1),
            "api_rss_with_connections_mb": round(with_idle, 1),
            "kb_per_connection": round((with_idle - idle_before) * 1024 / max(1, args.idle), 1),
        }
    finally:
        await asyncio.to_thread(cleanup.run)
    return results


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--hold":
        asyncio.run(hold(sys.argv[2], json.loads(sys.stdin.readline())))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="jobs queued per second")
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="200 clients/jobs, 1,000 idle")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.jobs, args.idle = 200, 200, 1000
    h.install_signal_handlers()
    results = asyncio.run(run(args))
    lat, mem = results.get("latency", {}), results.get("memory", {})
    m = results["machine"]
    print(f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}")
    print(
        f"notification latency (store write → client), {lat.get('clients')} clients on one "
        f"API process, {lat.get('received')}/{lat.get('jobs')} events: "
        f"p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, max {lat.get('max_ms')} ms"
    )
    print(
        f"API memory: {mem.get('api_rss_idle_mb')} MB idle, "
        f"{mem.get('api_rss_with_connections_mb')} MB with {mem.get('idle_connections')} idle "
        f"websocket connections ({mem.get('kb_per_connection')} KB each)"
    )
    out = h.BENCH / "results" / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-realtime.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
