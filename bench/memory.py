"""Memory: the API with 10,000 idle Socket.IO websocket connections, and the worker with
1,000 jobs in flight (issue 19).

    .venv/bin/python bench/memory.py [--store sqlite|postgres|mongo] [--connections 10000]
        [--client-procs 4] [--hold 40] [--phases api,worker] [--set NAME=VALUE]

**api** — one `smartgen api` (a private Redis, the store, no worker). `--client-procs`
helper processes (this script with `--hold`) open the connections: raw websockets
(aiohttp) speaking Engine.IO 4 / Socket.IO 5 themselves — the open packet, `40{"token":…}`
to the default namespace, `3` for every ping — so that a client costs a few KB and 10,000
fit in a few processes (python-socketio's AsyncClient costs far more). Every connection
is a user of its own (tokens minted with the API's secret). The API's RSS is read idle,
once every connection is acknowledged (`40{"sid":…}`), and sampled while they are held
for `--hold` seconds (longer than Engine.IO's 25 s ping interval, so each connection
answers a ping and the server's per-ping work is in the window); the API's CPU over the
hold says what 10,000 idle connections cost. Target: ≤ 500 MB. Connections the server
refused or closed are counted.

**worker** — bench/suite.py's memory phase as it is: a worker with
`WORKER_CONCURRENCY=1000`, the fake model holding every call until 1,000 are in flight.
Target: ≤ 150 MB.

**trace** (not run by default: `--phases trace`) — where an idle connection's memory goes:
the API runs inside this process under `tracemalloc`, one helper opens `--connections`
connections, and the growth of Python's allocations is printed per connection by file
and by line (the largest).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from harness import (
    BACKENDS,
    BENCH,
    PYTHON,
    Cleanup,
    FakeLLM,
    Redis,
    Smartgen,
    Workspace,
    create_accounts,
    free_port,
    log,
    machine,
    mint_users,
    raise_fd_limit,
    run_main,
    smartgen_env,
    wait_idle,
)

PHASES = ("api", "worker", "trace")
DEFAULT_PHASES = "api,worker"
TARGET_API_MB = 500.0
TARGET_WORKER_MB = 150.0


# --- the helper process: idle connections ---------------------------------------------------
class Held:
    def __init__(self) -> None:
        self.connected = 0
        self.refused = 0
        self.failed = 0
        self.closed = 0  # by the server after being connected
        self.pings = 0
        self.errors: dict[str, int] = {}


async def hold_one(
    session: aiohttp.ClientSession, url: str, token: str, held: Held, answered: asyncio.Event
) -> None:
    """One connection: Engine.IO open, Socket.IO connect with the token, then answer pings
    until the server or the end closes it. `answered` is set once the server acknowledged
    or refused the connection, or it failed."""
    connected = False
    try:
        async with session.ws_connect(url, autoping=True, heartbeat=None) as ws:
            opening = await ws.receive(timeout=60)
            if opening.type != aiohttp.WSMsgType.TEXT or not opening.data.startswith("0"):
                raise RuntimeError(f"no Engine.IO open packet: {opening.data!r}")
            await ws.send_str("40" + json.dumps({"token": token}))
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                data = message.data
                if data == "2":  # Engine.IO ping
                    held.pings += 1
                    await ws.send_str("3")
                elif data.startswith("40") and not connected:
                    connected = True
                    held.connected += 1
                    answered.set()
                elif data.startswith("44"):
                    held.refused += 1
                    answered.set()
                    return
                elif data.startswith("1"):  # Engine.IO close
                    break
    except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
        name = type(exc).__name__
        held.errors[name] = held.errors.get(name, 0) + 1
    finally:
        if connected:
            held.closed += 1
        elif not answered.is_set():
            held.failed += 1
            answered.set()


async def hold(url: str) -> None:
    """Helper: tokens as a JSON list on the first line of stdin; print `held …` once every
    connection is answered; keep them until stdin closes; print the final counts."""
    raise_fd_limit()
    tokens: list[str] = json.loads(sys.stdin.readline())
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    held = Held()
    ready = asyncio.Semaphore(0)
    opening = asyncio.Semaphore(64)  # handshakes in progress at once
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, connect=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(token: str) -> None:
            async with opening:
                answered = asyncio.Event()
                task = asyncio.create_task(hold_one(session, ws_url, token, held, answered))
                await answered.wait()  # acknowledged, refused or failed
                ready.release()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        began = time.monotonic()
        tasks = [asyncio.create_task(one(t)) for t in tokens]
        for _ in tokens:
            await ready.acquire()
        print(
            json.dumps(
                {
                    "held": held.connected,
                    "refused": held.refused,
                    "failed": held.failed,
                    "errors": dict(held.errors),
                    "seconds": round(time.monotonic() - began, 1),
                }
            ),
            flush=True,
        )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        summary: dict[str, Any] = {
            "still_connected": held.connected - held.closed,
            "closed_by_server": held.closed,
            "pings": held.pings,
            "errors": dict(held.errors),
        }
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(json.dumps(summary), flush=True)


# --- the measurement ---------------------------------------------------------------------------
def proc_status_mb(pid: int, key: str) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024
    return 0.0


async def api_phase(args: argparse.Namespace, ws: Workspace, backend: Any) -> dict[str, Any]:
    redis = Redis(ws)
    llm = FakeLLM(ws)
    await asyncio.gather(redis.start(), llm.start())
    secret = secrets.token_hex(32)
    env = smartgen_env(
        redis_url=redis.url,
        store_env=await backend.database("memory_api"),
        llm_base_url=llm.base_url,
        jwt_secret=secret,
        queue_prefix=f"mem{secrets.token_hex(3)}",
    )
    env.update(dict(args.set))
    if args.src:  # A/B runs: smartgen imported from another checkout
        env["PYTHONPATH"] = args.src
    smartgen = Smartgen(ws, env)
    api, url = await smartgen.api("api-memory")
    await asyncio.sleep(2.0)
    idle_mb = api.rss_mb()
    log(f"  API idle: {idle_mb:.0f} MB; minting {args.connections} users' tokens")
    users = mint_users(secret, args.connections)
    await create_accounts(env, users)  # the API refuses a token whose user does not exist
    tokens = [u.token for u in users]
    chunks = [tokens[i :: args.client_procs] for i in range(args.client_procs)]
    helpers: list[asyncio.subprocess.Process] = []
    began = time.monotonic()
    cpu_before = api.cpu_seconds()
    try:
        for chunk in chunks:
            helper = await asyncio.create_subprocess_exec(
                PYTHON, __file__, "--hold", url,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert helper.stdin is not None
            helper.stdin.write(json.dumps(chunk).encode() + b"\n")
            await helper.stdin.drain()
            helpers.append(helper)
        opened: list[dict[str, Any]] = []
        peak = idle_mb
        for helper in helpers:
            assert helper.stdout is not None
            while True:  # sample the API while the helpers connect
                try:
                    line = await asyncio.wait_for(helper.stdout.readline(), 0.5)
                    break
                except TimeoutError:
                    peak = max(peak, api.rss_mb())
            if not line:
                raise RuntimeError("a connection helper exited early")
            opened.append(json.loads(line))
        connect_s = time.monotonic() - began
        connect_cpu = api.cpu_seconds() - cpu_before
        held = sum(o["held"] for o in opened)
        refused = sum(o["refused"] for o in opened)
        failed = sum(o["failed"] for o in opened)
        log(f"  {held} connected in {connect_s:.1f} s ({refused} refused, {failed} failed)")
        await asyncio.sleep(2.0)
        connected_mb = api.rss_mb()
        peak = max(peak, connected_mb)
        cpu_hold_before = api.cpu_seconds()
        hold_began = time.monotonic()
        while time.monotonic() - hold_began < args.hold:
            peak = max(peak, api.rss_mb())
            await asyncio.sleep(0.5)
        hold_s = time.monotonic() - hold_began
        hold_cpu = api.cpu_seconds() - cpu_hold_before
        held_mb = api.rss_mb()
        finals: list[dict[str, Any]] = []
        for helper in helpers:
            assert helper.stdin is not None and helper.stdout is not None
            helper.stdin.close()
            line = await asyncio.wait_for(helper.stdout.readline(), 60)
            finals.append(json.loads(line) if line else {})
    finally:
        for helper in helpers:
            if helper.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    helper.kill()
                await helper.wait()
        await asyncio.to_thread(api.stop)
        await backend.drop_database(env)
    still = sum(f.get("still_connected", 0) for f in finals)
    figures = {
        "connections": args.connections,
        "client_procs": args.client_procs,
        "connected": held,
        "refused": refused,
        "failed": failed,
        "connect_seconds": round(connect_s, 1),
        "api_cpu_ms_per_connect": round(connect_cpu * 1000 / max(1, held), 3),
        "api_rss_idle_mb": round(idle_mb, 1),
        "api_rss_connected_mb": round(connected_mb, 1),
        "api_rss_after_hold_mb": round(held_mb, 1),
        "api_rss_max_mb": round(peak, 1),
        "api_peak_hwm_mb": round(proc_status_mb(api.pid, "VmHWM"), 1),
        "kb_per_connection": round((connected_mb - idle_mb) * 1024 / max(1, held), 1),
        "hold_seconds": round(hold_s, 1),
        "api_cpu_percent_holding": round(100 * hold_cpu / hold_s, 2),
        "still_connected_after_hold": still,
        "closed_by_server": sum(f.get("closed_by_server", 0) for f in finals),
        "pings_answered": sum(f.get("pings", 0) for f in finals),
        "client_errors": _added([o.get("errors", {}) for o in opened]),
    }
    log(
        f"  API RSS {idle_mb:.0f} MB idle, {connected_mb:.0f} MB with {held} connections, "
        f"max {peak:.0f} MB; {still} still connected after {hold_s:.0f} s"
    )
    return figures


async def worker_phase(args: argparse.Namespace, ws: Workspace, backend: Any) -> dict[str, Any]:
    """bench/suite.py's memory phase, unchanged."""
    from suite import MONGO_QUICK, QUICK, Suite

    redis = Redis(ws)
    llm = FakeLLM(ws)
    await asyncio.gather(redis.start(), llm.start())
    plan = MONGO_QUICK if backend.kind == "mongo" else QUICK
    suite = Suite(backend, plan, ws, redis, llm)
    figures: dict[str, Any] = await suite.memory()
    return figures


async def trace_phase(args: argparse.Namespace, ws: Workspace, backend: Any) -> dict[str, Any]:
    """The API in this process under tracemalloc; Python's allocations per connection."""
    import gc
    import tracemalloc

    import uvicorn

    from smartgen.api.app import create_app
    from smartgen.config import load_settings
    from smartgen.server import heap
    from smartgen.server.http import uvicorn_config

    redis = Redis(ws)
    await redis.start()
    secret = secrets.token_hex(32)
    env = smartgen_env(
        redis_url=redis.url,
        store_env=await backend.database("memory_trace"),
        llm_base_url="http://127.0.0.1:9/v1",
        jwt_secret=secret,
        queue_prefix=f"mem{secrets.token_hex(3)}",
        LOG_LEVEL="warning",
    )
    env.update(dict(args.set))
    names = {name.lower() for name in env} & set(_settings_fields())
    settings = load_settings(**{n: env[n.upper()] for n in names})
    app = create_app(settings, init_store=True, on_started=heap.settle_heap)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, settings, host="127.0.0.1", port=port))
    serving = asyncio.create_task(server.serve())
    helper: asyncio.subprocess.Process | None = None
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.05)
        users = mint_users(secret, args.connections)
        await create_accounts(env, users)
        tokens = [u.token for u in users]
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        helper = await asyncio.create_subprocess_exec(
            PYTHON, __file__, "--hold", f"http://127.0.0.1:{port}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert helper.stdin is not None and helper.stdout is not None
        helper.stdin.write(json.dumps(tokens).encode() + b"\n")
        await helper.stdin.drain()
        opened = json.loads(await asyncio.wait_for(helper.stdout.readline(), 600))
        await asyncio.sleep(1.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        n = max(1, opened["held"])

        def top(key: str, count: int) -> list[tuple[str, int]]:
            stats = after.compare_to(before, key)
            rows = []
            for stat in stats[:count]:
                frame = stat.traceback[0]
                where = _short_path(frame.filename) + (
                    f":{frame.lineno}" if key == "lineno" else ""
                )
                rows.append((where, round(stat.size_diff / n)))
            return rows

        total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        figures = {
            "connections": opened["held"],
            "python_kb_per_connection": round(total / n / 1024, 1),
            "bytes_per_connection_by_file": top("filename", 20),
            "bytes_per_connection_by_line": top("lineno", 20),
        }
        helper.stdin.close()
        await asyncio.wait_for(helper.stdout.readline(), 60)
    finally:
        if helper is not None and helper.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                helper.kill()
            await helper.wait()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 30)
        await backend.drop_database(env)
    return figures


def _added(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for name, n in one.items():
            total[name] = total.get(name, 0) + n
    return total


def _settings_fields() -> list[str]:
    from smartgen.config import Settings

    return list(Settings.model_fields)


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/src/", "lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return "stdlib/" + tail.split("/", 1)[-1] if marker == "lib/python3." else tail
    return path


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print()
    print(f"== memory ({result['store_description']})")
    print(
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gib']} GiB, Python "
        f"{m['python']}, kernel {m['kernel']}, redis-server {m['redis']}"
    )
    api = result.get("api")
    if api:
        ok = api["api_rss_max_mb"] <= TARGET_API_MB and api["connected"] == api["connections"]
        print(
            f"API with {api['connected']} of {api['connections']} idle websocket connections "
            f"({api['refused']} refused, {api['failed']} failed): RSS {api['api_rss_idle_mb']} "
            f"MB idle, {api['api_rss_connected_mb']} MB connected, max "
            f"{api['api_rss_max_mb']} MB ({api['kb_per_connection']} KB per connection) "
            f"(target ≤ {TARGET_API_MB:g} MB: {'met' if ok else 'MISSED'})"
        )
        print(
            f"  connected in {api['connect_seconds']} s ({api['api_cpu_ms_per_connect']} ms of "
            f"API CPU each); held {api['hold_seconds']} s at {api['api_cpu_percent_holding']} % "
            f"of one core, {api['pings_answered']} pings answered, "
            f"{api['still_connected_after_hold']} still connected, "
            f"{api['closed_by_server']} closed by the server"
        )
        if api.get("client_errors"):
            print(f"  client errors while connecting: {api['client_errors']}")
    worker = result.get("worker")
    if worker:
        ok = worker["worker_rss_max_mb"] <= TARGET_WORKER_MB
        print(
            f"worker with {worker['llm_in_flight']} jobs in flight (WORKER_CONCURRENCY="
            f"{worker['worker_concurrency']}): RSS {worker['worker_rss_idle_mb']} MB idle, "
            f"{worker['worker_rss_in_flight_mb']} MB in flight, max {worker['worker_rss_max_mb']} "
            f"MB (target ≤ {TARGET_WORKER_MB:g} MB: {'met' if ok else 'MISSED'})"
        )
    trace = result.get("trace")
    if trace:
        print(
            f"Python allocations per idle connection ({trace['connections']} connections): "
            f"{trace['python_kb_per_connection']} KB"
        )
        for where, size in trace["bytes_per_connection_by_file"]:
            print(f"  {size:>7,} B  {where}")
        print("  largest lines:")
        for where, size in trace["bytes_per_connection_by_line"][:12]:
            print(f"  {size:>7,} B  {where}")
    for phase, error in result["errors"].items():
        print(f"{phase}: FAILED: {error}")
    print(f"json: {result['json_path']}")


async def run(args: argparse.Namespace, cleanup: Cleanup) -> int:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    ws = Workspace(cleanup, keep=args.keep)
    backend = BACKENDS[args.store](ws)
    await backend.start()
    result: dict[str, Any] = {
        "store": args.store,
        "store_description": await backend.describe(),
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if k != "keep"},
        "started_at": datetime.now(UTC).isoformat(),
        "errors": {},
    }
    for phase in args.phases.split(","):
        log(f"phase {phase}: {await wait_idle(limit_s=10)}")
        try:
            measure = {"api": api_phase, "worker": worker_phase, "trace": trace_phase}[phase]
            result[phase] = await measure(args, ws, backend)
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise
        except Exception as exc:
            log(f"  phase {phase} failed: {type(exc).__name__}: {exc}")
            result["errors"][phase] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{stamp}-memory-{args.store}.json"
    result["json_path"] = str(path)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_report(result)
    return 1 if result["errors"] else 0


def _setting(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().upper(), value


def main() -> int:
    parser = argparse.ArgumentParser(description="smartgen memory figures (issue 19)")
    parser.add_argument("--store", choices=tuple(BACKENDS), default="sqlite")
    parser.add_argument("--phases", default=DEFAULT_PHASES, help=f"subset of {PHASES}")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--client-procs", type=int, default=4, help="connection helpers")
    parser.add_argument(
        "--hold", type=float, default=40.0, help="seconds to hold them (> the 25 s ping)"
    )
    parser.add_argument(
        "--src",
        help="phase api: run the API from this src/ directory (PYTHONPATH) instead of the "
        "installed package, for before/after comparisons of a change",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=_setting,
        metavar="NAME=VALUE",
        help="phases api and trace: a smartgen setting for the API (repeatable), e.g. "
        "--set SOCKETIO_COMPACT_CONNECTIONS=false for the libraries' stock objects",
    )
    parser.add_argument("--keep", action="store_true", help="keep the workspace (logs)")
    args = parser.parse_args()
    if args.src:
        args.src = os.path.abspath(args.src)
        if not os.path.isdir(os.path.join(args.src, "smartgen")):
            parser.error(f"--src {args.src}: no smartgen package there")
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.connections < 1 or not 1 <= args.client_procs <= 64:
        parser.error("--connections ≥ 1 and --client-procs in 1..64")
    return run_main(lambda cleanup: run(args, cleanup))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--hold":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        try:
            import uvloop

            uvloop.run(hold(sys.argv[2]))
        except ImportError:  # pragma: no cover
            asyncio.run(hold(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
