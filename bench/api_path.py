"""CPU per request through the API's whole ASGI stack, in-process: the real app
(`create_app`, its middleware, dependencies, rate limits, store, queue and event log) on a
private redis-server and a SQLite file (or, with `--store postgres`, a fresh database on
the PostgreSQL at BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres; with
`--store mongo`, a private SecantusDB, the MongoDB wire-protocol server the seed runs on),
called directly, without sockets or a load
generator. The figure a change to the request path moves, steadier than the suite's on a
busy shared machine: each round runs before and after one after the other, and the
median of the rounds is printed.

    .venv/bin/python bench/api_path.py --src /tmp/before/src --src src --rounds 5
    .venv/bin/python bench/api_path.py --calls --src /tmp/before/src --src src --rounds 1
    .venv/bin/python bench/api_path.py --store postgres --src /tmp/before/src --src src

`--calls` counts the Python function calls of a request instead (cProfile, the event
loop's thread): a figure that does not move with the machine's load, and the functions
called most, to find where two checkouts differ.

Default-on features stay on, their limits out of reach; no worker runs (jobs stay queued,
as in the suite's ingest phase). CPU is the process's (its threads included: SQLite's
statements run in a pool; PostgreSQL's server CPU is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

USERS = 50
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Asgi:
    """Calls an ASGI app as uvicorn would, one request at a time per call."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        raw = json.dumps(body).encode() if body is not None else b""
        headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench")]
        if body is not None:
            headers += [(b"content-type", b"application/json")]
            headers += [(b"content-length", str(len(raw)).encode())]
        if token:
            headers.append((b"authorization", b"Bearer " + token.encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await asyncio.Event().wait()  # the client stays connected
            return {"type": "http.disconnect"}

        status = 0
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        data = b"".join(chunks)
        return status, json.loads(data) if data else None


async def measure(
    port: int, database_url: str, requests: int, concurrency: int, calls: bool = False
) -> dict[str, Any]:
    try:
        from smartgen.api.app import create_app
    except ImportError:  # a checkout from before the layout of issue 13 (smartgen/app.py)
        from smartgen.app import create_app  # type: ignore[no-redef]
    from smartgen.config import load_settings

    store_url = (
        {"mongo_uri": database_url}
        if database_url.startswith("mongodb")
        else {"database_url": database_url}
    )
    settings = load_settings(
        redis_url=f"redis://127.0.0.1:{port}/0",
        **store_url,
        jwt_secret="bench-" + "x" * 40,
        # As the suite's API: a model server named (never called here), no delay.
        llm_provider="openai",
        base_url="http://127.0.0.1:9/v1",
        openrouter_model="bench/fake-model",
        generation_delay_seconds=0,
        generate_rate_limit=10**9,
        generate_ip_rate_limit=10**9,
        register_ip_rate_limit=0,
        max_unfinished_jobs=10**6,
    )
    api = create_app(settings)
    http = api.http if hasattr(api, "http") else api.fastapi_app  # (before issue 13)
    async with http.router.lifespan_context(http):
        client = Asgi(api)
        tokens = []
        for i in range(USERS):
            status, data = await client.call(
                "POST",
                "/auth/register",
                {"email": f"u{i}@example.com", "password": "benchmark password"},
            )
            assert status == 201, (status, data)
            tokens.append(data["token"])
        body = {"prompt": "A short post about tea", "contentType": "Blog Post Outline"}
        jobs: list[tuple[str, str]] = []  # (job id, its owner's token)

        async def post(i: int) -> None:
            status, data = await client.call("POST", "/generate-content", body, tokens[i % USERS])
            assert status == 202, (status, data)
            jobs.append((data["jobId"], tokens[i % USERS]))

        async def get(i: int) -> None:
            job_id, token = jobs[i % len(jobs)]
            status, data = await client.call("GET", f"/generate-content/{job_id}", None, token)
            assert status == 200, (status, data)

        async def run(kind: Any, n: int) -> float:
            semaphore = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with semaphore:
                    await kind(i)

            started = time.process_time()
            await asyncio.gather(*(one(i) for i in range(n)))
            return (time.process_time() - started) / n * 1e6

        if calls:  # Python function calls per request instead of CPU time
            await run(post, 300)
            await asyncio.sleep(0.2)  # the event publisher's last batch
            before = redis_commands(port)
            post_calls = await counted(run, post, requests)
            await asyncio.sleep(0.2)
            post_calls["redis"] = redis_commands(port, since=before, per=requests)
            await run(get, 300)
            await asyncio.sleep(0.2)
            before = redis_commands(port)
            get_calls = await counted(run, get, requests)
            await asyncio.sleep(0.2)
            get_calls["redis"] = redis_commands(port, since=before, per=requests)
            await asyncio.sleep(0.2)
            return {"post_calls": post_calls, "get_calls": get_calls}
        await run(post, 300)  # warm-up: caches, statements, connections
        posts = await run(post, requests)
        await run(get, 300)
        gets = await run(get, requests)
        await asyncio.sleep(0.2)  # the event publisher's last batch
    return {"post_us": posts, "get_us": gets}


def redis_commands(
    port: int, *, since: dict[str, float] | None = None, per: int = 1
) -> dict[str, float]:
    """The private Redis's commands by name (INFO commandstats), counted since `since`,
    per request: what a request costs in round trips and server work."""
    import redis

    with redis.Redis(port=port) as client:
        stats = client.info("commandstats")
    now = {name.removeprefix("cmdstat_"): float(row["calls"]) for name, row in stats.items()}
    if since is None:
        return now
    moved = {k: (v - since.get(k, 0)) / per for k, v in now.items()}
    moved.pop("info", None)  # this function's own
    return {k: round(v, 2) for k, v in sorted(moved.items()) if v > 0}


async def counted(run: Any, kind: Any, n: int) -> dict[str, Any]:
    """Python function calls per request in the event loop's thread (cProfile's count,
    the same on a busy machine as on a quiet one), and the functions called most."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    await run(kind, n)
    profiler.disable()
    if os.environ.get("BENCH_PSTATS"):  # the whole profile, for pstats' own views
        profiler.dump_stats(f"{os.environ['BENCH_PSTATS']}.{kind.__name__}")
    stats = pstats.Stats(profiler)
    rows = sorted(
        ((calls / n, f"{Path(file).parent.name}/{Path(file).name}:{line}({name})")
         for (file, line, name), (_, calls, *_rest) in stats.stats.items()),  # type: ignore[attr-defined]
        reverse=True,
    )  # fmt: skip
    return {"per_request": stats.total_calls / n, "top": rows[:40]}  # type: ignore[attr-defined]


async def pg_database(action: str, name: str) -> str:
    """Create (or drop) a database of this round's own; its URL."""
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        if action == "create":
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def secantus(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """SecantusDB (the MongoDB wire-protocol test server the suite runs on) with its data
    in `work`; its process and the database's URL. Its CPU is not counted (its own
    process), only the API's."""
    port = free_port()
    (work / "secantus").mkdir()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("secantusd-py")), "--standalone",
         "--host", "127.0.0.1", "--port", str(port),
         "--storage-path", str(work / "secantus"), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    answering(port, seconds=30)
    return proc, f"mongodb://127.0.0.1:{port}/api_path"


def private_redis(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server of its own on a free port, its files in `work`, its port answering."""
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # never the parent's pipe: it would outlive a dead child
    )  # fmt: skip
    answering(port, seconds=10)
    return redis, port


def answering(port: int, *, seconds: float) -> None:
    """Wait (at most `seconds`) until something listens on the loopback `port`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)


def child(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="smartgen-api-path-"))
    redis, port = private_redis(work)
    try:
        database = f"sqlite:///{work / 'smartgen.db'}"
        mongo = None
        if args.store == "mongo":
            mongo, database = secantus(work)
        if args.store == "postgres":
            database = asyncio.run(pg_database("create", f"smartgen_api_path_{port}"))
        try:
            result = asyncio.run(
                measure(port, database, args.requests, args.concurrency, calls=args.calls)
            )
        finally:
            if args.store == "postgres":
                asyncio.run(pg_database("drop", f"smartgen_api_path_{port}"))
            if mongo is not None:
                mongo.terminate()
                mongo.wait()
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", action="append", help="a src/ directory (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--calls",
        action="store_true",
        help="count Python function calls per request (steady on a busy machine) and "
        "print the functions called most, instead of CPU time",
    )
    parser.add_argument("--store", choices=("sqlite", "postgres", "mongo"), default="sqlite")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    sources = [os.path.abspath(s) for s in (args.src or ["src"])]
    results: dict[str, list[dict[str, float]]] = {s: [] for s in sources}
    for r in range(args.rounds):
        for src in sources:
            env = {**os.environ, "PYTHONPATH": src}
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--requests", str(args.requests),
                 "--concurrency", str(args.concurrency), "--store", args.store,
                 *(["--calls"] if args.calls else [])],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            if out.returncode != 0:  # one lost round is reported, not the whole run
                tail = (out.stderr.strip().splitlines() or ["?"])[-1]
                print(f"round {r + 1} {src}: failed ({out.returncode}): {tail}", flush=True)
                continue
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            if args.calls:
                for kind in ("post", "get"):
                    found = figures[f"{kind}_calls"]
                    print(f"{src}: {kind.upper()} {found['per_request']:.0f} calls per request")
                    redis_line = ", ".join(f"{k} {v:g}" for k, v in found["redis"].items())
                    print(f"    Redis commands per request: {redis_line}")
                    for per, where in found["top"]:
                        print(f"    {per:8.2f}  {where}")
                continue
            results[src].append(figures)
            load = os.getloadavg()[0]
            print(
                f"round {r + 1} {src}: POST {figures['post_us']:.0f} us, "
                f"GET {figures['get_us']:.0f} us CPU per request (load {load:.1f})",
                flush=True,
            )
    for src, rounds in results.items():
        if args.calls:
            continue
        if not rounds:
            print(f"median {src}: no round completed")
            continue
        post = statistics.median(x["post_us"] for x in rounds)
        get = statistics.median(x["get_us"] for x in rounds)
        print(f"median {src}: POST {post:.0f} us, GET {get:.0f} us CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
