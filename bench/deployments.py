"""Two API processes on one 2-core host: smartgen's sticky dispatcher against the standard
deployments it replaces, measured the same way and checked with real Socket.IO clients.

    .venv/bin/python bench/deployments.py                 # one run of each deployment
    .venv/bin/python bench/deployments.py --repeat 3      # a b c d a b c d a b c d, medians
    .venv/bin/python bench/deployments.py --only a,b --seconds 5 --no-check

Deployments (each on the same PostgreSQL database, recreated empty for every run, and the
same private Redis, flushed for every run):

  a  `API_WORKERS=2 smartgen api`: the dispatcher owns the port, peeks at each new
     connection's first request and hands the connection to the worker owning its
     Engine.IO session (src/smartgen/sticky.py)
  b  two `smartgen api` on two ports behind nginx (`worker_processes auto`): REST
     round-robin over kept-alive upstream connections, `/socket.io/` sticky by
     `hash $remote_addr consistent` (the Socket.IO documentation's nginx set-up)
  c  two processes sharing one port with SO_REUSEPORT (bench/reuseport_api.py): the
     kernel spreads connections; no stickiness at all
  d  one `smartgen api`: the reference

For each run: `wrk` (1 thread, bench/wrk/post.lua, keep-alive) POSTs /generate-content at
64 connections for `--seconds` after a warm-up; req/s counts 202s only; p50/p99 are wrk's.
CPU per answered request is user+sys time read from /proc/<pid>/stat for EVERY process of
the deployment (API processes, the dispatcher, nginx's master and workers), before and
after the load, divided by the requests answered; printed in total and by process kind.
Redis, our database's PostgreSQL backends and wrk do the same work for every deployment
and are printed only as context. No worker runs (GENERATION_DELAY_SECONDS=3600 too): jobs
only queue. GENERATE_RATE_LIMIT=1e9 keeps the limiter's Redis call in the path without
refusing; MAX_UNFINISHED_JOBS=0. `--connection-close` sends every request on a new
connection (wrk/post-close.lua): the case where the dispatcher works for every request.

On a shared machine: each run waits for the CPUs to be idle first (at most
`--idle-limit` s), and prints the 1-minute load average, the machine's speed
(harness.reference_cpu_ms) and the share of the CPUs that OTHER processes used during the
load; a run where that share exceeds `--max-others` is listed as discarded and run again
(at most `--busy-retries` times; the last attempt is kept whatever it measured).

Correctness (after the load, every run unless --no-check): `--clients` python-socketio
AsyncClients of each kind, all at once, each from its own loopback address (127.0.0.x, so
that nginx's address hash spreads them over both processes), connect with
`auth={"token": …}`, stay connected `--check-seconds` and make `--check-calls` `sync`
calls; a client passes if it connected, every call was answered and it was never
disconnected. Kinds:

  default          default transports: a long-polling handshake, then the upgrade. This
                   client upgrades at once and aiohttp carries the WebSocket on the
                   handshake's kept-alive connection: one TCP connection per session
  default-newconn  the same, a new TCP connection for every request, as a browser opens
                   its WebSocket (and a second connection while a long-poll is pending)
  polling          transports=["polling"]: long-polls on one connection while it POSTs on
                   another
  websocket        transports=["websocket"]: one connection, no session to keep

Every process, the temporary directory and the database (`smartgen_deploy_<random>`) are
removed at the end, on an error and on Ctrl-C. JSON: bench/results/<stamp>-deployments.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from harness import (
    BENCH,
    CLK_TCK,
    PG_ADMIN_URL,
    PYTHON,
    Cleanup,
    Proc,
    Redis,
    Smartgen,
    User,
    Workspace,
    free_port,
    log,
    machine,
    reference_cpu_ms,
    register_users,
    run_main,
    smartgen_env,
    wait_healthy,
    wait_idle,
    wait_port,
)

DEPLOYMENTS: dict[str, str] = {
    "a": "API_WORKERS=2 (sticky dispatcher)",
    "b": "2 x api + nginx (sticky by address)",
    "c": "2 x api, SO_REUSEPORT",
    "d": "1 x api (reference)",
}
REGISTERED_USERS = 8
TOKENS = 64  # registered + minted: the load's users, round-robin
WARMUP = ((16, 1.5), (64, 1.0))  # (connections, seconds) before each measured run
STARTED = "Application startup complete"  # uvicorn's line once an app's lifespan is up


# --- /proc ---------------------------------------------------------------------------------
def cpu_of(pid: int) -> float:
    """user + system CPU seconds of one process (all its threads); 0 if it is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        text = f.read()
        fields = text[text.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def children_of(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs together, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])  # guest time is already counted in user
    return total - fields[3] - fields[4], total


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


# --- the database ----------------------------------------------------------------------------
class Database:
    """Our own PostgreSQL database, recreated empty before every run, dropped at the end.
    Nothing else on the server is touched."""

    def __init__(self, cleanup: Cleanup) -> None:
        self.name = f"smartgen_deploy_{secrets.token_hex(4)}"
        self.url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{self.name}"
        cleanup.push(f"drop database {self.name}", lambda: asyncio.run(self._drop()))

    async def _admin(self) -> Any:
        import asyncpg

        return await asyncpg.connect(PG_ADMIN_URL, timeout=5)

    async def check(self) -> str:
        try:
            conn = await self._admin()
        except Exception as exc:
            raise SystemExit(
                f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); set BENCH_PG_URL"
            ) from None
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    async def _drop(self) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def backend_pids(self) -> list[int]:
        """The server processes serving connections to our database."""
        conn = await self._admin()
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.name
            )
        finally:
            await conn.close()
        return [int(r["pid"]) for r in rows]

    async def recreate(self) -> None:
        await self._drop()
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()


# --- tokens ------------------------------------------------------------------------------------
async def mint_tokens(secret: str, n: int, env: dict[str, str]) -> list[str]:
    """Tokens for `n` extra users, signed with the API's JWT_SECRET as smartgen's own codec
    signs them, and their accounts in the system's store (the API refuses a token whose
    user does not exist)."""
    from harness import create_accounts, mint_users

    users = mint_users(secret, n)
    await create_accounts(env, users)
    return [u.token for u in users]


# --- nginx -------------------------------------------------------------------------------------
NGINX_CONF = """\
# smartgen behind nginx: two API processes, REST round-robin, Socket.IO sticky by address.
daemon off;                      # bench only: nginx runs as our child process
worker_processes auto;           # one per core
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format sio '$remote_addr $upstream_addr $status "$request"';

    # REST is stateless (jobs, events and rate limits live in Redis and the store): any
    # process will do, round-robin over kept-alive upstream connections.
    upstream smartgen_rest {{
{servers}
        keepalive 64;
        keepalive_timeout 4s;    # below uvicorn's 5 s, so nginx never reuses a closed one
    }}

    # Socket.IO's long-polling needs every request of a session on the same process.
    # The handshake carries no session id, so only something the client sends from its
    # first request on can pin it: its address. `hash $remote_addr consistent` uses the
    # whole address (`ip_hash` only the first three octets of IPv4).
    upstream smartgen_socketio {{
        hash $remote_addr consistent;
{servers}
        keepalive 16;
        keepalive_timeout 4s;
    }}

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';                  # plain requests: keep the upstream connection alive
    }}

    server {{
        listen 127.0.0.1:{port} reuseport backlog=2048;
        client_max_body_size 256k;   # MAX_BODY_BYTES

        location /socket.io/ {{
            proxy_pass http://smartgen_socketio;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 120s;     # above Engine.IO's ping interval + timeout (45 s)
            proxy_buffering off;
            access_log {dir}/socketio.log sio;   # bench only: which process served whom
        }}

        location / {{
            proxy_pass http://smartgen_rest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, ws: Workspace, backends: list[int]) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise SystemExit("nginx is not installed: apt-get install -y nginx")
        # Its own directory, readable by the workers (which run as nobody when we are root).
        self.dir = Path(tempfile.mkdtemp(prefix="smartgen-deploy-nginx-"))
        ws.cleanup.push("remove nginx dir", lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.dir.chmod(0o755)
        self.port = free_port()
        servers = "\n".join(f"        server 127.0.0.1:{p};" for p in backends)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(dir=self.dir, port=self.port, servers=servers))
        self.proc = Proc(
            "nginx",
            [binary, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(self.conf)],
            env=None,
            cwd=self.dir,
            log_dir=ws.logs,
            cleanup=ws.cleanup,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await wait_port(self.port, self.proc)

    def socketio_log(self) -> list[tuple[str, str, str]]:
        """(client address, upstream address, status) of every /socket.io/ request."""
        rows = []
        with contextlib.suppress(OSError):
            for line in (self.dir / "socketio.log").read_text().splitlines():
                parts = line.split(" ", 3)
                if len(parts) >= 3:
                    rows.append((parts[0], parts[1], parts[2]))
        return rows

    def errors(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "error.log").read_text()[-2000:]
        return ""


# --- deployments -------------------------------------------------------------------------------
@dataclass
class Running:
    key: str
    url: str
    procs: list[Proc]
    nginx: Nginx | None = None
    sticky: Proc | None = None

    def groups(self) -> dict[str, list[int]]:
        """Process kind -> pids, read now (a parent's children included)."""
        if self.sticky is not None:
            return {"dispatcher": [self.sticky.pid], "api": children_of(self.sticky.pid)}
        out: dict[str, list[int]] = {"api": [p.pid for p in self.procs]}
        if self.nginx is not None:
            master = self.nginx.proc.pid
            out["nginx"] = [master, *children_of(master)]
        return out

    def api_pids(self) -> list[int]:
        return self.groups()["api"]

    async def stop(self) -> None:
        if self.nginx is not None:
            await asyncio.to_thread(self.nginx.proc.stop)
        for proc in reversed(self.procs):
            await asyncio.to_thread(proc.stop)

    def logs(self) -> str:
        text = "".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.procs)
        if self.nginx is not None:
            text += f"--- nginx\n{self.nginx.proc.output()[-1000:]}{self.nginx.errors()}"
        return text


async def wait_started(proc: Proc, count: int, within: float = 60.0) -> None:
    """Until `count` apps in the process's log (a dispatcher's workers log there too) have
    finished their lifespan's start-up."""
    deadline = time.monotonic() + within
    while proc.output().count(STARTED) < count:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.output()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name}: {count} × {STARTED!r} not seen:\n{proc.output()}")
        await asyncio.sleep(0.05)


async def start_deployment(key: str, ws: Workspace, env: dict[str, str]) -> Running:
    sg = Smartgen(ws, env)
    if key == "a":
        proc, url = await sg.api("api-sticky", API_WORKERS="2")
        await wait_started(proc, 2)
        return Running(key, url, [proc], sticky=proc)
    if key == "b":
        procs, ports = [], []
        for i in (1, 2):  # one after the other: each checks the schema at start-up
            proc, url = await sg.api(f"api-nginx-{i}")
            procs.append(proc)
            ports.append(int(url.rsplit(":", 1)[1]))
        nginx = Nginx(ws, ports)
        await nginx.start()
        await wait_healthy(nginx.url, nginx.proc)
        return Running(key, nginx.url, procs, nginx=nginx)
    if key == "c":
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs = []
        for i in (1, 2):
            args = [PYTHON, str(BENCH / "reuseport_api.py")] + (["--init-store"] if i == 1 else [])
            proc = Proc(
                f"api-reuseport-{i}",
                args,
                env={**env, "PORT": str(port)},
                cwd=sg.cwd,
                log_dir=ws.logs,
                cleanup=ws.cleanup,
            )
            procs.append(proc)
            if i == 1:  # the only one listening yet: its readiness is its own
                await wait_healthy(url, proc)
            await wait_started(proc, 1)
        return Running(key, url, procs)
    if key == "d":
        proc, url = await sg.api("api-single")
        await wait_started(proc, 1)
        return Running(key, url, [proc])
    raise ValueError(key)


# --- load --------------------------------------------------------------------------------------
async def wrk(
    url: str, tokens: Path, connections: int, seconds: float, script: str
) -> dict[str, Any]:
    args = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(BENCH / "wrk" / script), url, "--", str(tokens),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no figures:\n{text}\n{err.decode(errors='replace')}")
    raw = json.loads(line[len("WRKJSON ") :])
    duration = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["status_errors"]
    return {
        "connections": connections,
        "requests": raw["requests"],
        "ok": ok,
        "non_ok": raw["status_errors"],
        "errors": sum(
            raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
        "duration_s": round(duration, 3),
        "rps": round(ok / duration, 1) if duration else 0.0,
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measured_load(
    running: Running, redis: Redis, db: Database, tokens: Path, args: argparse.Namespace
) -> dict[str, Any]:
    for connections, seconds in WARMUP:  # pools grow to the load (not counted)
        await wrk(running.url, tokens, connections, seconds, args.script)
    groups = running.groups()
    pids = sorted({pid for group in groups.values() for pid in group})
    pg_before = {pid: cpu_of(pid) for pid in await db.backend_pids()}
    before = {pid: cpu_of(pid) for pid in pids}
    redis_before = cpu_of(redis.proc.pid)
    wrk_before = _children_cpu()
    busy_before, total_before = machine_jiffies()
    figures = await wrk(running.url, tokens, args.connections, args.seconds, args.script)
    busy_after, total_after = machine_jiffies()
    wrk_cpu = _children_cpu() - wrk_before
    redis_cpu = cpu_of(redis.proc.pid) - redis_before
    used = {pid: cpu_of(pid) - before[pid] for pid in pids}
    # Backends opened during the run count from zero; one closed during it is lost.
    pg_cpu = sum(cpu_of(pid) - pg_before.get(pid, 0.0) for pid in await db.backend_pids())
    answered = max(1, int(figures["ok"]) + int(figures["non_ok"]))
    # The rest of the machine meanwhile (other users' work), as a share of all its CPUs.
    busy = (busy_after - busy_before) / CLK_TCK
    capacity = (total_after - total_before) / CLK_TCK
    ours = sum(used.values()) + redis_cpu + wrk_cpu + pg_cpu
    figures["machine_busy_share"] = round(busy / max(1e-9, capacity), 3)
    figures["others_share"] = round(max(0.0, busy - ours) / max(1e-9, capacity), 3)

    def per_request(seconds: float) -> float:
        return round(float(seconds) * 1000 / answered, 3)

    by_kind = {kind: per_request(sum(used[p] for p in group)) for kind, group in groups.items()}
    api_cpu = [used[p] for p in groups["api"]]
    figures["cpu_ms_per_request"] = {
        "total": per_request(sum(used.values())),
        **by_kind,
        "context_redis": per_request(redis_cpu),
        "context_postgres": per_request(pg_cpu),
        "context_wrk": per_request(wrk_cpu),
    }
    figures["api_cpu_split"] = [round(c / max(1e-9, sum(api_cpu)), 2) for c in api_cpu]
    figures["processes"] = {kind: len(group) for kind, group in groups.items()}
    return figures


# --- Socket.IO correctness ---------------------------------------------------------------------
def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("deployments.socketio-client")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    logger.setLevel(logging.CRITICAL)
    return logger


# Client kinds: (transports, a new TCP connection for every request).
# python-socketio's client upgrades at once, on the kept-alive connection of its handshake
# (aiohttp reuses it for the WebSocket), so "default" never needs two connections to one
# session; a browser opens the WebSocket on a new connection and long-polls on one while it
# POSTs on another: "default, new connections" and "polling" are what browsers do.
CLIENT_MODES: dict[str, tuple[list[str] | None, bool]] = {
    "default": (None, False),
    "default-newconn": (None, True),
    "polling": (["polling"], False),
    "websocket": (["websocket"], False),
}
MODE_TITLES = {
    "default": "default (polling → upgrade)",
    "default-newconn": "default, new conn. per request",
    "polling": "polling only",
    "websocket": "websocket only",
}


async def one_client(
    url: str,
    token: str,
    *,
    transports: list[str] | None,
    new_connections: bool,
    address: str,
    seconds: float,
    calls: int,
) -> dict[str, Any]:
    import socketio

    quiet = _quiet_logger()
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=new_connections)
    http = aiohttp.ClientSession(connector=connector)
    sio = socketio.AsyncClient(
        reconnection=False,
        handle_sigint=False,
        logger=quiet,
        engineio_logger=quiet,
        http_session=http,
    )
    result: dict[str, Any] = {
        "address": address,
        "connected": False,
        "calls_ok": 0,
        "calls": calls,
        "disconnects": 0,
        "error": None,
    }

    async def disconnected(*reason: Any) -> None:
        result["disconnects"] += 1
        result.setdefault("disconnect_reason", str(reason[0]) if reason else "")

    sio.on("disconnect", disconnected)
    try:
        await sio.connect(
            url,
            auth={"token": token},
            transports=transports,
            wait_timeout=10,
        )
        result["connected"] = True
        result["sid"] = sio.eio.sid
        for _ in range(calls):
            await asyncio.sleep(seconds / calls)
            try:
                reply = await sio.call("sync", {"since": 0}, timeout=5)
            except Exception as exc:
                result["error"] = result["error"] or f"sync: {type(exc).__name__}: {exc}"
                continue
            if isinstance(reply, dict) and isinstance(reply.get("jobs"), list):
                result["calls_ok"] += 1
            else:
                result["error"] = result["error"] or f"sync: unexpected reply {reply!r:.200}"
        result["transport"] = sio.transport() if sio.connected else None
        result["still_connected"] = sio.connected
    except Exception as exc:
        result["error"] = result["error"] or f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sio.disconnect(), 5)
        await http.close()
    if result["disconnects"] and result["connected"] and result.get("still_connected") is False:
        result["error"] = result["error"] or f"disconnected ({result.get('disconnect_reason')})"
    result["ok"] = bool(
        result["connected"]
        and result["calls_ok"] == calls
        and result.get("still_connected")
        and result["error"] is None
    )
    return result


async def check_socketio(running: Running, token: str, args: argparse.Namespace) -> dict[str, Any]:
    """`--clients` clients of each mode (CLIENT_MODES), all at once, each mode's from its
    own block of loopback addresses."""
    tasks = []
    for m, (mode, (transports, new_connections)) in enumerate(CLIENT_MODES.items()):
        for i in range(args.clients):
            tasks.append(
                (mode, one_client(
                    running.url, token, transports=transports,
                    new_connections=new_connections, address=f"127.0.0.{10 + 50 * m + i}",
                    seconds=args.check_seconds, calls=args.check_calls,
                ))
            )  # fmt: skip
    results = await asyncio.gather(*(t for _, t in tasks))
    out: dict[str, Any] = {}
    for mode in CLIENT_MODES:
        rows = [r for (m, _), r in zip(tasks, results, strict=True) if m == mode]
        out[mode] = {
            "ok": sum(r["ok"] for r in rows),
            "clients": len(rows),
            "transports": dict(Counter(str(r.get("transport")) for r in rows)),
            "errors": sorted({r["error"] for r in rows if r["error"]})[:5],
        }
        if running.sticky is not None:  # the worker each session landed on: "<index>.<…>"
            out[mode]["sessions_by_worker"] = dict(
                Counter(str(r.get("sid", "?")).split(".", 1)[0] for r in rows if r.get("sid"))
            )
    if running.nginx is not None:
        out["nginx"] = nginx_stickiness(running.nginx.socketio_log())
    return out


def nginx_stickiness(rows: list[tuple[str, str, str]]) -> dict[str, Any]:
    """From nginx's /socket.io/ log: did every client stay on one process, and were the
    clients spread over both?"""
    by_client: dict[str, set[str]] = {}
    statuses: Counter[str] = Counter()
    for client, upstream, status in rows:
        by_client.setdefault(client, set()).add(upstream)
        statuses[status] += 1
    return {
        "requests": len(rows),
        "clients_on_several_processes": sum(len(u) > 1 for u in by_client.values()),
        "clients_by_process": dict(Counter(",".join(sorted(u)) for u in by_client.values())),
        "statuses": dict(statuses),
    }


# --- one run -----------------------------------------------------------------------------------
@dataclass
class Context:
    ws: Workspace
    redis: Redis
    db: Database
    args: argparse.Namespace
    jwt_secret: str = field(default_factory=lambda: secrets.token_hex(32))


async def run_one(ctx: Context, key: str, rep: int, *, last_attempt: bool) -> dict[str, Any]:
    """One run of one deployment. Unless this is the last attempt, a run during which the
    rest of the machine used more than `--max-others` of it is marked `discarded` (and
    not checked): the caller runs it again."""
    args = ctx.args
    idle = await wait_idle(limit_s=args.idle_limit)
    result: dict[str, Any] = {
        "deployment": key,
        "name": DEPLOYMENTS[key],
        "run": rep,
        "idle": idle,
        "loadavg": loadavg(),
        "reference_cpu_ms": reference_cpu_ms(),
    }
    log(f"run {rep} ({key}) {DEPLOYMENTS[key]}: {idle}; load average {result['loadavg']}; "
        f"machine speed {result['reference_cpu_ms']} ms")  # fmt: skip
    await ctx.db.recreate()
    await ctx.redis.flushall()
    env = smartgen_env(
        redis_url=ctx.redis.url,
        store_env={"DATABASE_URL": ctx.db.url},
        llm_base_url="http://127.0.0.1:9/v1",  # no worker runs: never called
        jwt_secret=ctx.jwt_secret,
        queue_prefix=f"deploy{secrets.token_hex(3)}",
        GENERATION_DELAY_SECONDS="3600",
        MAX_UNFINISHED_JOBS="0",
        GENERATE_RATE_LIMIT="1000000000",
        GENERATE_IP_RATE_LIMIT="1000000000",
    )
    running = await start_deployment(key, ctx.ws, env)
    try:
        users = await register_users([running.url], REGISTERED_USERS + 1, tag=f"deploy{key}")
        checker: User = users.pop()  # a user of its own, with no jobs, for the Socket.IO check
        tokens = [u.token for u in users] + await mint_tokens(
            ctx.jwt_secret, TOKENS - len(users), env
        )
        tokens_file = ctx.ws.dir / "tokens.txt"
        tokens_file.write_text("".join(t + "\n" for t in tokens))
        result["load"] = await measured_load(running, ctx.redis, ctx.db, tokens_file, args)
        log("  " + fmt_run(result))
        others = result["load"]["others_share"]
        if others > args.max_others and not last_attempt:
            result["discarded"] = f"others used {others:.0%} of the machine"
            log(f"  discarded: {result['discarded']} (> {args.max_others:.0%}); again")
            return result
        if not args.no_check:
            result["check"] = await check_socketio(running, checker.token, args)
            log("  Socket.IO: " + fmt_check(result["check"]))
        dead = [p.name for p in running.procs if not p.alive()]
        if dead:
            raise RuntimeError(f"processes died during the run: {dead}\n{running.logs()}")
    finally:
        await running.stop()
    return result


# --- output ------------------------------------------------------------------------------------
KINDS = ("api", "dispatcher", "nginx")


def fmt_run(result: dict[str, Any]) -> str:
    load = result["load"]
    cpu = load["cpu_ms_per_request"]
    kinds = ", ".join(f"{k} {cpu[k]:.3f}" for k in KINDS if k in cpu)
    failures = load["non_ok"] + load["errors"]
    return (
        f"{load['rps']:,.0f} req/s, p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms; "
        f"CPU {cpu['total']:.3f} ms/req ({kinds}; split {load['api_cpu_split']}); "
        f"context: redis {cpu['context_redis']:.3f}, postgres {cpu['context_postgres']:.3f}, "
        f"wrk {cpu['context_wrk']:.3f}; machine busy {load['machine_busy_share']:.0%}, "
        f"others {load['others_share']:.0%}" + (f"; {failures} failed" if failures else "")
    )


def fmt_check(check: dict[str, Any]) -> str:
    parts = []
    for mode in CLIENT_MODES:
        m = check[mode]
        text = f"{mode} {m['ok']}/{m['clients']} ok"
        if "sessions_by_worker" in m:
            text += f" (sessions by worker {m['sessions_by_worker']})"
        if m["errors"]:
            text += f" [{m['errors'][0][:120]}]"
        parts.append(text)
    if "nginx" in check:
        n = check["nginx"]
        parts.append(
            f"nginx: {n['clients_on_several_processes']} clients on several processes, "
            f"clients by process {n['clients_by_process']}"
        )
    return "; ".join(parts)


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def table(rows: Iterable[list[str]], header: list[str]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells)))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


HEADER = [
    "run", "deployment", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "api", "dispatcher",
    "nginx", "api split", "redis*", "pg*", "wrk*", "others", "load avg", "speed ms", "fail",
]  # fmt: skip


def run_row(r: dict[str, Any]) -> list[str]:
    load = r["load"]
    cpu = load["cpu_ms_per_request"]
    return [
        str(r["run"]),
        f"({r['deployment']}) {r['name']}",
        f"{load['rps']:,.0f}",
        f"{load['p50_ms']:.1f}",
        f"{load['p99_ms']:.1f}",
        f"{cpu['total']:.3f}",
        *(_cell(cpu.get(k), ".3f") for k in KINDS),
        "/".join(f"{s:.2f}" for s in load["api_cpu_split"]),
        f"{cpu['context_redis']:.3f}",
        f"{cpu['context_postgres']:.3f}",
        f"{cpu['context_wrk']:.3f}",
        f"{load['others_share']:.0%}",
        r["loadavg"].split()[0],
        f"{r['reference_cpu_ms']:.0f}",
        str(load["non_ok"] + load["errors"]),
    ]


def median_row(key: str, runs: list[dict[str, Any]]) -> list[str]:
    def med(get: Callable[[dict[str, Any]], Any]) -> float | None:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return float(statistics.median(values)) if values else None

    def cpu(kind: str) -> float | None:
        return med(lambda r: r["load"]["cpu_ms_per_request"].get(kind))

    return [
        f"med/{len(runs)}",
        f"({key}) {DEPLOYMENTS[key]}",
        _cell(med(lambda r: r["load"]["rps"]), ",.0f"),
        _cell(med(lambda r: r["load"]["p50_ms"]), ".1f"),
        _cell(med(lambda r: r["load"]["p99_ms"]), ".1f"),
        _cell(cpu("total"), ".3f"),
        *(_cell(cpu(k), ".3f") for k in KINDS),
        "",
        _cell(cpu("context_redis"), ".3f"),
        _cell(cpu("context_postgres"), ".3f"),
        _cell(cpu("context_wrk"), ".3f"),
        _cell(med(lambda r: r["load"]["others_share"] * 100), ".0f") + "%",
        "",
        _cell(med(lambda r: r["reference_cpu_ms"]), ".0f"),
        str(sum(r["load"]["non_ok"] + r["load"]["errors"] for r in runs)),
    ]


def matrix(runs: list[dict[str, Any]], keys: list[str]) -> str:
    rows = []
    notes: list[str] = []
    for key in keys:
        checks = [r["check"] for r in runs if r["deployment"] == key and "check" in r]
        if not checks:
            continue
        cells = []
        for mode in CLIENT_MODES:
            ok = sum(c[mode]["ok"] for c in checks)
            total = sum(c[mode]["clients"] for c in checks)
            verdict = "yes" if ok == total else ("NO" if ok == 0 else "BROKEN")
            errors = sorted({e for c in checks for e in c[mode]["errors"]})
            cells.append(f"{verdict} {ok}/{total}")
            for error in errors[:2]:
                notes.append(f"({key}) {mode}: {error[:150]}")
        rows.append([f"({key}) {DEPLOYMENTS[key]}", *cells])
    header = ["deployment", *MODE_TITLES.values()]
    return table(rows, header) + "".join("\n  " + n for n in notes)


# --- main --------------------------------------------------------------------------------------
async def run(args: argparse.Namespace, cleanup: Cleanup) -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    keys = args.only.split(",") if args.only else list(DEPLOYMENTS)
    ws = Workspace(cleanup, keep=args.keep)
    db = Database(ws.cleanup)
    pg_version = await db.check()
    redis = Redis(ws)
    await redis.start()
    ctx = Context(ws, redis, db, args)
    log(f"workspace {ws.dir}; database {db.name} (PostgreSQL {pg_version}); redis :{redis.port}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []  # runs measured while the machine was busy
    errors: list[str] = []
    began = time.monotonic()
    for rep in range(1, args.repeat + 1):
        for key in keys:
            if args.rest and (rep > 1 or key != keys[0]):
                await asyncio.sleep(args.rest)
            for attempt in range(args.busy_retries + 1):
                try:
                    result = await run_one(ctx, key, rep, last_attempt=attempt == args.busy_retries)
                except (KeyboardInterrupt, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    log(f"  run {rep} ({key}) failed: {type(exc).__name__}: {str(exc)[:3000]}")
                    errors.append(f"run {rep} ({key}): {type(exc).__name__}: {str(exc)[:2000]}")
                    break
                if "discarded" not in result:
                    runs.append(result)
                    break
                discarded.append(result)
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "postgresql": pg_version,
        "settings": {k: v for k, v in vars(args).items()},
        "runs": runs,
        "discarded_runs": discarded,
        "errors": errors,
    }
    (BENCH / "results").mkdir(exist_ok=True)
    path = BENCH / "results" / f"{stamp}-deployments.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")

    m = out["machine"]
    print(f"\n== deployments: POST /generate-content, {args.connections} connections, "
          f"{args.seconds:g} s per run, wrk {args.script}; PostgreSQL {pg_version}")  # fmt: skip
    print(f"machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, "
          f"redis {m['redis']}; {time.monotonic() - began:.0f} s")  # fmt: skip
    print(table((run_row(r) for r in runs), HEADER))
    if discarded:
        print(f"discarded and run again (others > {args.max_others:.0%}):")
        print(table(([f"x{r['run']}", *run_row(r)[1:]] for r in discarded), HEADER))
    print()
    print(table((median_row(k, [r for r in runs if r["deployment"] == k]) for k in keys
                 if any(r["deployment"] == k for r in runs)), HEADER))  # fmt: skip
    print(
        "CPU ms/req: user+sys of every process of the deployment ÷ requests answered "
        "(api, dispatcher, nginx = master+workers).\n*context, the same work for every "
        "deployment: the private redis-server, our database's PostgreSQL backends, wrk.\n"
        "others: the rest of the machine's CPU use during the run (other users), in % of "
        "all CPUs. load avg: 1-min, before the run. speed: harness.reference_cpu_ms "
        "before the run, lower is faster (27-36 ms on a quiet machine)."
    )
    if not args.no_check:
        print()
        print(f"== Socket.IO: {args.clients} clients per mode, {args.check_seconds:g} s each, "
              f"{args.check_calls} sync calls; every run")  # fmt: skip
        print(matrix(runs, keys))
    if errors:
        print("\nERRORS:\n" + "\n".join(errors))
    print(f"\nJSON: {path}")
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="rounds of a, b, c, d (interleaved)")
    parser.add_argument("--only", help="comma-separated subset of a,b,c,d (in that order)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured load per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--connection-close",
        action="store_true",
        help="every request on a new connection (wrk/post-close.lua): clients without "
        "keep-alive, where the dispatcher works per request",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the Socket.IO check")
    parser.add_argument("--clients", type=int, default=4, help="Socket.IO clients per mode")
    parser.add_argument("--check-seconds", type=float, default=10.0)
    parser.add_argument("--check-calls", type=int, default=5, help="sync calls per client")
    parser.add_argument("--rest", type=float, default=0.0, help="idle seconds before each run")
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.20,
        help="a run during which other processes used more than this share of the machine's "
        "CPUs is run again (listed as discarded)",
    )
    parser.add_argument(
        "--busy-retries", type=int, default=2, help="how often a busy run is run again"
    )
    parser.add_argument(
        "--idle-limit", type=float, default=60.0, help="longest wait for an idle machine"
    )
    parser.add_argument("--keep", action="store_true", help="keep the workspace (logs)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.only:
        unknown = set(args.only.split(",")) - set(DEPLOYMENTS)
        if unknown:
            parser.error(f"--only: unknown deployments {sorted(unknown)}")
        args.only = ",".join(k for k in DEPLOYMENTS if k in args.only.split(","))
    if not 1 <= args.clients <= 50:
        parser.error("--clients: 1 to 50")
    args.script = "post-close.lua" if args.connection_close else "post.lua"
    keys = args.only.split(",") if args.only else list(DEPLOYMENTS)
    if "b" in keys and shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        parser.error("nginx is not installed: apt-get install -y nginx")
    return run_main(lambda cleanup: run(args, cleanup))


if __name__ == "__main__":
    sys.exit(main())
