"""smartgen side by side with two reference peers: CPU time per job of each API and worker.

    .venv/bin/python bench/peers.py                       # smartgen, node-seed, celery-seed once
    .venv/bin/python bench/peers.py --repeat 3            # interleaved runs, then the median
    .venv/bin/python bench/peers.py --store postgres,sqlite   # plus smartgen on those stores
    .venv/bin/python bench/peers.py --systems smartgen --profile   # py-spy on smartgen's processes
    .venv/bin/python bench/peers.py --jobs 96 --warmup 16            # a quick check
    .venv/bin/python bench/peers.py --systems smartgen --src ../before/src   # another checkout
    .venv/bin/python bench/peers.py --systems smartgen --set METRICS_ENABLED=false  # a setting
    .venv/bin/python bench/peers.py --systems smartgen --calls --src ../before/src  # calls/job

The peers are the reference implementations in `shared/peers/` (`node-seed`: Express +
BullMQ + mongodb driver + Socket.IO; `celery-seed`: FastAPI + Celery + pymongo). They are
never copied into the repository: each run copies them into a cache outside git
(`~/.cache/smartgen-bench/peers/`, `--cache`) and installs them there (`npm ci`; a venv
made with the machine's `python3` and `pip install -r requirements.txt`), again only when
a peer's files changed.

Shared on loopback: one SecantusDB server (the MongoDB wire-protocol test server; its own
process) with a database per system and run, the fake LLM (`bench/llmserver.py`, 0 ms),
and one private `redis-server` per system. For each system in turn (own API and worker
processes, `WORKER_CONCURRENCY` alike, `GENERATION_DELAY_SECONDS=0`): a warm-up of
`--warmup` jobs, all waited for; then the measured window: `--jobs` POST
/generate-content from `--concurrency` keep-alive connections while the worker drains
them, until every job is completed (or failed) in the store. CPU time is utime + stime
(+ reaped children's) of each process's whole tree from /proc, before and after the
window. The system is stopped, its database dropped and its Redis flushed, and the
machine left to become idle before the next system starts.

Beside CPU per job: the kernel's share of it, involuntary context switches per job (a
busy machine preempts more), each process's CPU while idle, Redis commands per job (INFO
commandstats of the system's own Redis, Lua scripts' inner calls included) and MongoDB
requests per job (the wire server's serverStatus, less this script's own reads).

smartgen is reached only through its processes and HTTP (`python -m smartgen api|worker`);
this script imports none of its modules. Users: HS256 tokens minted with the shared
JWT_SECRET (user id in both `id` and `sub`, an `exp`), the same for the three systems
(smartgen, which refuses a token whose user does not exist, gets their accounts written
into its store).
The peers listen on loopback only: node-seed with a `--require` preload that gives
`server.listen(port)` the host 127.0.0.1, celery-seed's API through the same
`uvicorn.run(...)` call as its `python -m api` with host 127.0.0.1.

`--calls` runs smartgen's processes under `bench/counted.py` and counts their Python
function calls during the measured window (cProfile, switched on and off by signals; the
profiles are kept in bench/results/ for pstats' own views): calls per job, a figure that
does not move with the machine's speed, to compare two checkouts (`--src`) where CPU time
cannot resolve a change. The CPU figures of such a run are inflated by the profiler.

`--profile` runs `py-spy record --gil --nonblocking` (bench/harness.py's Profiler) on
smartgen's API and worker during the measured window and prints the suite's summary plus
a view without the samples whose leaf is a socket write: py-spy samples wall time with the
GIL held, and a loopback write that wakes its receiver often leaves the writer preempted
but still "running" (here py-spy counted 2.2-2.7x the CPU time /proc did, and 26-41 % of
its samples were such leaves; the rest of the excess, spread evenly, skews no share).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from harness import (
    BENCH,
    CLK_TCK,
    ENTRY_FRAMES,
    PYTHON,
    ROOT,
    Cleanup,
    FakeLLM,
    MongoBackend,
    MongoProbe,
    PostgresBackend,
    Proc,
    Profiler,
    Redis,
    SqliteBackend,
    StoreBackend,
    Workspace,
    _package,  # py-spy frame parsing, as in the suite's summary
    _short_frame,
    free_port,
    log,
    machine,
    reference_cpu_ms,
    run_main,
    summarize_profile,
    wait_idle,
    wait_port,
)
from loadgen import post_factory, run_load

PEERS = ("node-seed", "celery-seed")
SYSTEMS = ("smartgen", *PEERS)
DEFAULT_PEERS_DIR = Path(os.environ.get("BENCH_PEERS_DIR") or ROOT.parent / "shared" / "peers")
DEFAULT_CACHE = Path(
    os.environ.get("BENCH_PEERS_CACHE") or Path.home() / ".cache" / "smartgen-bench" / "peers"
)
TARGET_RATIO = 0.5  # smartgen's CPU per job at most half the better peer's
# Environment variables passed through to every process; nothing else leaks in (no stray
# MONGO_URI, REDIS_URL or smartgen setting from the caller's shell).
# `--src`: smartgen's processes import it from this src/ directory (PYTHONPATH).
SMARTGEN_SRC = ""
# `--set NAME=VALUE`: smartgen settings for its processes (what a feature costs: a run with
# it off beside one with it on).
SMARTGEN_SET: dict[str, str] = {}
# `--calls`: smartgen's processes run under bench/counted.py, their profiles written here.
COUNTED_PREFIX: Path | None = None
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "TERM")

# Makes `server.listen(port)` (which binds every interface) bind loopback only; written
# into the cache and preloaded with `node --require`. The peer's own code is untouched.
NODE_LOOPBACK = """\
// Written by smartgen's bench/peers.py: bind listening sockets to loopback only.
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && (args.length === 1 || typeof args[1] === 'function')) {
    args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
"""
# celery-seed's `python -m api` runs `uvicorn.run(asgi, host="0.0.0.0", port=PORT)`: the
# same call, on loopback.
CELERY_API = "import uvicorn, api; uvicorn.run(api.asgi, host='127.0.0.1', port=api.PORT)"


# --- /proc: CPU time of a process tree ------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """The process and all its descendants (children of every thread, recursively)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(p) for p in f.read().split())
    return out


def tree_cpu_split(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every process in the tree (all threads), each with
    its reaped children's (cutime, cstime: a prefork pool's recycled children)."""
    user = system = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields:
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    return sum(tree_cpu_split(root))


def tree_rss_mb(root: int) -> float:
    total = 0.0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += float(line.split()[1])
    return total / 1024


def tree_switches(root: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread in the tree: many
    involuntary ones mean the process was often preempted (a busy machine)."""
    vol = invol = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            invol += int(line.split()[1])
    return vol, invol


def loadavg() -> str:
    with contextlib.suppress(OSError), open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
    return "?"


def kill_group_leftovers(pgid: int) -> None:
    """SIGKILL what is left of the process group of a child we started (its own session),
    e.g. a pool child that outlived its parent. Only processes whose group is `pgid`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields and int(fields[2]) == pgid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)


class TreeProc:
    """A `harness.Proc` whose CPU and memory are those of its whole process tree."""

    def __init__(self, proc: Proc, cleanup: Cleanup) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.name = proc.name
        cleanup.push(f"leftovers of {proc.name}", lambda: kill_group_leftovers(proc.pid))

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def cpu_split(self) -> tuple[float, float]:
        return tree_cpu_split(self.pid)

    def rss_mb(self) -> float:
        return tree_rss_mb(self.pid)

    def switches(self) -> tuple[int, int]:
        return tree_switches(self.pid)

    def processes(self) -> int:
        return len(tree_pids(self.pid))

    def alive(self) -> bool:
        return self.proc.alive()

    def output(self) -> str:
        return self.proc.output()

    async def wait_for_output(self, text: str, within: float) -> None:
        await self.proc.wait_for_output(text, within)

    async def stop(self) -> None:
        await asyncio.to_thread(self.proc.stop)
        kill_group_leftovers(self.pid)


# --- installing the peers (outside git) --------------------------------------------------------
def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.parts[0] in {".venv", "node_modules", "__pycache__"} or not path.is_file():
            continue
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


async def _step(name: str, args: list[str], cwd: Path, ws: Workspace, within: float) -> None:
    proc = Proc(name, args, env=None, cwd=cwd, log_dir=ws.logs, cleanup=ws.cleanup)
    deadline = time.monotonic() + within
    while proc.alive():
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name}: took more than {within:.0f} s")
        await asyncio.sleep(0.2)
    code = proc.stop()
    if code != 0:
        raise RuntimeError(f"{name} failed (exit {code}):\n{proc.output()[-3000:]}")


def _lock(cache: Path, name: str) -> Any:
    """An exclusive lock on the cache entry (two runs at once install it once)."""
    cache.mkdir(parents=True, exist_ok=True)
    lock = open(cache / f".{name}.lock", "w")  # noqa: SIM115  (closed by the caller's with)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


async def install_peer(
    name: str, peers_dir: Path, cache: Path, ws: Workspace, *, force: bool
) -> Path:
    """A copy of `peers_dir/name` in `cache/name`, installed; reused while its files are the
    same. The copy is writable (the shared originals are read-only)."""
    src = peers_dir / name
    if not src.is_dir():
        raise SystemExit(f"peer {name} not found in {peers_dir} (--peers DIR)")
    dst = cache / name
    marker = dst / ".bench-installed"
    digest = _digest(src)
    with await asyncio.to_thread(_lock, cache, name):
        if not force and marker.exists() and marker.read_text().strip() == digest:
            log(f"peer {name}: installed copy in {dst} is current")
            return dst
        log(f"peer {name}: copying to {dst} and installing (once per change of its files)")
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for path in src.rglob("*"):
            rel = path.relative_to(src)
            if rel.parts[0] in {".venv", "node_modules", "__pycache__"}:
                continue
            if path.is_dir():
                (dst / rel).mkdir(parents=True, exist_ok=True)
            else:
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dst / rel)  # contents only: the copy stays writable
        try:
            if name == "node-seed":
                npm = shutil.which("npm")
                if npm is None:
                    raise SystemExit("node-seed needs node and npm (Node 20)")
                await _step("npm-ci", [npm, "ci", "--no-audit", "--no-fund"], dst, ws, within=900)
                (dst / "bench-loopback.cjs").write_text(NODE_LOOPBACK)
            else:
                python3 = shutil.which("python3")
                if python3 is None:
                    raise SystemExit("celery-seed needs python3 (with venv)")
                await _step("venv", [python3, "-m", "venv", str(dst / ".venv")], dst, ws, 300)
                pip = str(dst / ".venv" / "bin" / "pip")
                args = [pip, "install", "--disable-pip-version-check", "-q"]
                args += ["-r", "requirements.txt"]
                await _step("pip-install", args, dst, ws, within=900)
        except BaseException:
            shutil.rmtree(dst, ignore_errors=True)
            raise
        marker.write_text(digest + "\n")
        return dst


def peer_versions(name: str, folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if name == "node-seed":
        with contextlib.suppress(Exception):
            out["node"] = subprocess.run(
                ["node", "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        for pkg in ("express", "bullmq", "mongodb", "socket.io", "ioredis", "jsonwebtoken"):
            with contextlib.suppress(Exception):
                meta = json.loads((folder / "node_modules" / pkg / "package.json").read_text())
                out[pkg] = meta["version"]
    else:
        code = (
            "import json, platform, importlib.metadata as m\n"
            "out = {'python': platform.python_version()}\n"
            "for p in ('fastapi', 'uvicorn', 'celery', 'kombu', 'redis', 'pymongo', "
            "'python-socketio', 'httpx'):\n"
            "    out[p] = m.version(p)\n"
            "print(json.dumps(out))"
        )
        with contextlib.suppress(Exception):
            text = subprocess.run(
                [str(folder / ".venv" / "bin" / "python"), "-c", code],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            out.update(json.loads(text))
    return out


def smartgen_version() -> dict[str, str]:
    code = (
        "import json, platform, importlib.metadata as m\n"
        "out = {'python': platform.python_version()}\n"
        "for p in ('smartgen', 'fastapi', 'uvicorn', 'bullmq', 'pymongo', 'redis', "
        "'python-socketio', 'aiohttp'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except Exception: pass\n"
        "print(json.dumps(out))"
    )
    with contextlib.suppress(Exception):
        out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=30)
        return dict(json.loads(out.stdout))
    return {}


# --- stores ------------------------------------------------------------------------------------
class SqlCounts:
    """Job counts by status straight from smartgen's SQL table `jobs` (asyncpg / sqlite3;
    none of smartgen's modules)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url

    async def counts(self) -> dict[str, int]:
        query = "SELECT status, count(*) FROM jobs GROUP BY status"
        if self.url.startswith("sqlite"):
            import sqlite3

            path = self.url.split(":///", 1)[1]

            def read() -> list[tuple[str, int]]:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
                try:
                    return conn.execute(query).fetchall()
                finally:
                    conn.close()

            rows = await asyncio.to_thread(read)
        else:
            import asyncpg

            conn = await asyncpg.connect(self.url, timeout=5)
            try:
                rows = [tuple(r) for r in await conn.fetch(query)]
            finally:
                await conn.close()
        return {str(s): int(n) for s, n in rows}

    async def close(self) -> None:
        pass


async def mongo_counters(client: Any) -> dict[str, int]:
    """The wire server's request and operation counters (serverStatus), all databases."""
    status = await client.admin.command("serverStatus")
    out = {"requests": int(status.get("network", {}).get("numRequests", 0))}
    out.update({k: int(v) for k, v in status.get("opcounters", {}).items()})
    return out


def make_probe(env: dict[str, str]) -> Any:
    if "MONGO_URI" in env:
        return MongoProbe(env["MONGO_URI"])
    return SqlCounts(env["DATABASE_URL"])


# --- the systems -------------------------------------------------------------------------------
@dataclass
class Shared:
    ws: Workspace
    mongo: MongoBackend
    llm: FakeLLM
    redis: dict[str, Redis]
    jwt_secret: str
    peer_dirs: dict[str, Path]
    sql: dict[str, StoreBackend] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))


def db_server_cpu(shared: Shared, store: str) -> float | None:
    """CPU seconds of the MongoDB wire server so far (None on the other stores: the
    PostgreSQL server is shared with the machine, SQLite runs inside the processes)."""
    proc = shared.mongo.proc if store == "mongo" else None
    return tree_cpu_seconds(proc.pid) if proc is not None else None


def base_env(**values: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env.update({k: str(v) for k, v in values.items()})
    return env


async def wait_ready(url: str, proc: TreeProc, within: float = 60.0) -> None:
    """smartgen: GET /readyz answers 200 (the store and Redis answer)."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.output()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not become ready:\n{proc.output()[-3000:]}")


async def start_system(
    system: str, store: str, shared: Shared, label: str, worker_concurrency: int
) -> tuple[TreeProc, TreeProc, str, dict[str, str]]:
    """Start one system's API and worker; returns (api, worker, url, store env)."""
    ws, cleanup = shared.ws, shared.ws.cleanup
    redis = shared.redis[system]
    port = free_port()
    if store == "mongo":
        db = f"peers_{shared.run_id}_{label}".replace("-", "_")
        store_env = {"MONGO_URI": f"mongodb://127.0.0.1:{shared.mongo.port}/{db}"}
    else:
        store_env = await shared.sql[store].database(f"{label}".replace("-", "_"))
    common = {
        "BASE_URL": shared.llm.base_url,
        "OPENROUTER_KEY": "bench-not-a-real-key",
        "OPENROUTER_MODEL": "bench/fake-model",
        "JWT_SECRET": shared.jwt_secret,
        "GENERATION_DELAY_SECONDS": "0",
        "WORKER_CONCURRENCY": str(worker_concurrency),
        **store_env,
    }
    if system == "smartgen":
        cwd = ws.dir / f"cwd-{label}"  # no stray .env; DATA_DIR inside
        cwd.mkdir()
        env = base_env(
            **common,
            REDIS_URL=redis.url,
            LLM_PROVIDER="openai",
            # On by default in production, so its Redis call per POST stays in the
            # measured path; out of reach of any benchmark user.
            GENERATE_RATE_LIMIT="1000000000",
            GENERATE_IP_RATE_LIMIT="1000000000",
            REGISTER_IP_RATE_LIMIT="0",
            LOGIN_RATE_LIMIT="0",
            LOGIN_IP_RATE_LIMIT="0",
            LOG_LEVEL="info",
            HOST="127.0.0.1",
            PORT=str(port),
            PYTHONUNBUFFERED="1",
        )
        if SMARTGEN_SRC:  # before/after runs: smartgen imported from another checkout's src/
            env["PYTHONPATH"] = SMARTGEN_SRC
        env.update(SMARTGEN_SET)
        api_args = [PYTHON, "-m", "smartgen", "api"]
        worker_args = [PYTHON, "-m", "smartgen", "worker"]
        if COUNTED_PREFIX is not None:
            counted = [PYTHON, str(BENCH / "counted.py")]
            api_args = [*counted, str(counted_file(label, "api")), "api"]
            worker_args = [*counted, str(counted_file(label, "worker")), "worker"]
        ready_text = "worker ready"
    else:
        cwd = shared.peer_dirs[system]
        env = base_env(
            **common, REDIS_ENDPOINT="127.0.0.1", REDIS_PORT=str(redis.port), PORT=str(port)
        )
        if system == "node-seed":
            preload = str(cwd / "bench-loopback.cjs")
            api_args = ["node", "--require", preload, "server.js"]
            worker_args = ["node", "worker.js"]
            ready_text = "Worker listening on queue"
        else:
            python = str(cwd / ".venv" / "bin" / "python")
            env["PYTHONUNBUFFERED"] = "1"
            api_args = [python, "-c", CELERY_API]
            worker_args = [python, "-m", "worker"]
            ready_text = " ready."
    api = TreeProc(
        Proc(f"{label}-api", api_args, env=env, cwd=cwd, log_dir=ws.logs, cleanup=cleanup),
        cleanup,
    )
    url = f"http://127.0.0.1:{port}"
    if system == "smartgen":
        await wait_ready(url, api)
    else:
        await wait_port(port, api.proc, within=60)
    worker = TreeProc(
        Proc(
            f"{label}-worker", worker_args, env=env, cwd=cwd, log_dir=ws.logs, cleanup=cleanup,
            stop_timeout=45,
        ),
        cleanup,
    )  # fmt: skip
    await worker.wait_for_output(ready_text, 90)
    return api, worker, url, store_env


def counted_file(label: str, kind: str) -> Path:
    assert COUNTED_PREFIX is not None
    return COUNTED_PREFIX.with_name(f"{COUNTED_PREFIX.name}-{label}-{kind}.pstats")


async def count_calls(label: str, procs: dict[str, TreeProc], sig: signal.Signals) -> None:
    """Start (SIGUSR1) or stop and write (SIGUSR2) bench/counted.py's profile in each
    process (by kind: api, worker)."""
    for proc in procs.values():
        os.kill(proc.pid, sig)
    if sig == signal.SIGUSR1:
        await asyncio.sleep(0.2)  # the handlers run at the processes' next bytecode
        return
    for path in (counted_file(label, kind) for kind in procs):
        for _ in range(100):  # written when the handler runs: wait for it, up to 10 s
            if path.exists():
                break
            await asyncio.sleep(0.1)


def calls_in(path: Path) -> int:
    """Python function calls in a pstats file (primitive and recursive alike)."""
    import pstats

    return sum(nc for _cc, nc, *_ in pstats.Stats(str(path)).stats.values())


def mint_tokens(secret: str, n: int) -> list[str]:
    """HS256 tokens for `n` users (ObjectId-shaped ids in `id` and `sub`), valid a day."""
    import jwt

    now = int(time.time())
    return [
        jwt.encode(
            {"id": uid, "sub": uid, "iat": now, "exp": now + 86400}, secret, algorithm="HS256"
        )
        for uid in (secrets.token_hex(12) for _ in range(n))
    ]


async def give_accounts(store_env: dict[str, str], tokens: list[str]) -> None:
    """smartgen refuses a token whose user does not exist: the minted users get rows in its
    users table (or collection), written as smartgen writes them, with a hash that matches
    no password (this script imports nothing of smartgen)."""
    import jwt

    ids = [jwt.decode(t, options={"verify_signature": False})["sub"] for t in tokens]
    now = datetime.now(UTC)
    if "MONGO_URI" in store_env:
        from bson import ObjectId
        from pymongo import AsyncMongoClient

        client: Any = AsyncMongoClient(store_env["MONGO_URI"])
        try:
            docs = [
                {"_id": ObjectId(u), "email": f"{u}@minted.invalid", "passwordHash": "!minted",
                 "createdAt": now, "updatedAt": now}
                for u in ids
            ]  # fmt: skip
            await client.get_default_database()["users"].insert_many(docs)
        finally:
            await client.close()
        return
    insert = (
        "INSERT INTO users (user_id, email, password_hash, created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $4)"
    )
    url = store_env["DATABASE_URL"]
    if url.startswith("sqlite"):
        import sqlite3

        text = now.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")  # smartgen's form
        rows = [(u, f"{u}@minted.invalid", "!minted", text) for u in ids]

        def write() -> None:
            path = url.removeprefix("sqlite:///")
            with contextlib.closing(sqlite3.connect(path)) as conn, conn:
                conn.executemany(insert.replace("$", "?"), rows)  # ?1 … ?4: numbered

        await asyncio.to_thread(write)
        return
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(insert, [(u, f"{u}@minted.invalid", "!minted", now) for u in ids])
    finally:
        await conn.close()


async def submit(url: str, tokens: list[str], count: int, concurrency: int) -> dict[str, Any]:
    first_error: list[str] = []

    def on_response(i: int, status: int, body: bytes) -> None:
        if status != 202 and not first_error:
            first_error.append(f"HTTP {status}: {body[:300]!r}")

    result = await run_load(
        url, post_factory(tokens), concurrency=concurrency, count=count, on_response=on_response
    )
    summary = result.summary(202)
    if first_error:
        summary["first_error"] = first_error[0]
    return summary


POLLS = [0]  # store reads by this script (each one MongoDB request), not the system's


async def wait_done(probe: Any, total: int, within: float, procs: list[TreeProc]) -> dict[str, int]:
    """Poll the store until `total` jobs are completed or failed."""
    deadline = time.monotonic() + within
    while True:
        POLLS[0] += 1
        counts: dict[str, int] = await probe.counts()
        if counts.get("completed", 0) + counts.get("failed", 0) >= total:
            return counts
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.output()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {counts} of {total} jobs final after {within:.0f} s")
        await asyncio.sleep(0.25)


def _final(counts: dict[str, int]) -> int:
    return counts.get("completed", 0) + counts.get("failed", 0)


async def measure(
    system: str,
    store: str,
    shared: Shared,
    args: argparse.Namespace,
    run: int,
    profile_prefix: Path | None,
) -> dict[str, Any]:
    label = f"r{run}-{system}" + ("" if store == "mongo" else f"-{store}")
    log(f"{label}: starting (load average {loadavg()})")
    api, worker, url, store_env = await start_system(
        system, store, shared, label, args.worker_concurrency
    )
    probe = make_probe(store_env)
    admin: Any = None
    if store == "mongo":
        from pymongo import AsyncMongoClient

        admin = AsyncMongoClient(f"mongodb://127.0.0.1:{shared.mongo.port}/")
    result: dict[str, Any] = {"system": system, "store": store, "run": run}
    try:
        tokens = mint_tokens(shared.jwt_secret, args.users)
        if system == "smartgen":
            await give_accounts(store_env, tokens)
        warm = await submit(url, tokens, args.warmup, args.concurrency)
        if warm["ok"] != args.warmup:
            raise RuntimeError(
                f"warm-up: {warm['ok']} of {args.warmup} accepted: {warm['statuses']} "
                f"{warm.get('first_error', '')}"
            )
        before = await wait_done(probe, warm["ok"], 60 + args.warmup, [api, worker])
        idle_began, idle_cpu0 = time.monotonic(), (api.cpu_seconds(), worker.cpu_seconds())
        idle_note = await wait_idle(limit_s=15)
        await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - idle_began)))
        idle_s = time.monotonic() - idle_began
        idle_cpu1 = (api.cpu_seconds(), worker.cpu_seconds())
        idle_cpu = [
            round((b - a) * 100 / idle_s, 1) for a, b in zip(idle_cpu0, idle_cpu1, strict=True)
        ]
        log(f"{label}: warm-up of {args.warmup} jobs done; {idle_note}")
        reference_before = reference_cpu_ms()
        load_before = loadavg()
        profilers: list[Profiler] = []
        if profile_prefix is not None and system == "smartgen":
            for proc in (api, worker):
                kind = proc.name.rsplit("-", 1)[1]
                out = profile_prefix.with_name(f"{profile_prefix.name}-{label}-{kind}.txt")
                profilers.append(Profiler(proc.pid, out, rate=args.profile_rate))
        async with contextlib.AsyncExitStack() as stack:
            for profiler in profilers:
                await stack.enter_async_context(profiler)
            counting = COUNTED_PREFIX is not None and system == "smartgen"
            if counting:
                await count_calls(label, {"api": api, "worker": worker}, signal.SIGUSR1)
            await shared.redis[system].command_counts(reset=True)
            mongo0 = await mongo_counters(admin) if admin is not None else {}
            polls0 = POLLS[0]
            sw0 = {"api": api.switches(), "worker": worker.switches()}
            (api_u0, api_s0), (worker_u0, worker_s0) = api.cpu_split(), worker.cpu_split()
            db0 = db_server_cpu(shared, store)
            began = time.monotonic()
            load = await submit(url, tokens, args.jobs, args.concurrency)
            submitted_s = time.monotonic() - began
            api1 = api.cpu_seconds()
            after = await wait_done(
                probe, _final(before) + load["ok"], 120 + args.jobs / 5, [api, worker]
            )
            wall = time.monotonic() - began
            (api_u2, api_s2), (worker_u2, worker_s2) = api.cpu_split(), worker.cpu_split()
            db2 = db_server_cpu(shared, store)
            sw2 = {"api": api.switches(), "worker": worker.switches()}
            polls = POLLS[0] - polls0
            mongo2 = await mongo_counters(admin) if admin is not None else {}
            redis_calls = await shared.redis[system].command_counts()
            if counting:
                await count_calls(label, {"api": api, "worker": worker}, signal.SIGUSR2)
        api0, api2 = api_u0 + api_s0, api_u2 + api_s2
        worker0, worker2 = worker_u0 + worker_s0, worker_u2 + worker_s2
        reference_after = reference_cpu_ms()
        completed = after.get("completed", 0) - before.get("completed", 0)
        failed = after.get("failed", 0) - before.get("failed", 0)
        accepted = load["ok"]
        result.update(
            {
                "label": label,
                "jobs": args.jobs,
                "accepted": accepted,
                "completed": completed,
                "failed": failed,
                "rejected": load["requests"] - accepted,
                "statuses": load["statuses"],
                "first_error": load.get("first_error"),
                "api_cpu_ms_per_job": round((api2 - api0) * 1000 / max(1, accepted), 3),
                "api_cpu_ms_per_job_while_submitting": round(
                    (api1 - api0) * 1000 / max(1, accepted), 3
                ),
                "worker_cpu_ms_per_job": round((worker2 - worker0) * 1000 / max(1, completed), 3),
                "api_cpu_s": round(api2 - api0, 3),
                "worker_cpu_s": round(worker2 - worker0, 3),
                # the kernel's share (system time: syscalls, loopback TCP) of each
                "api_sys_share": round((api_s2 - api_s0) / max(1e-9, api2 - api0), 3),
                "worker_sys_share": round(
                    (worker_s2 - worker_s0) / max(1e-9, worker2 - worker0), 3
                ),
                "api_preemptions_per_job": round(
                    (sw2["api"][1] - sw0["api"][1]) / max(1, accepted), 2
                ),
                "worker_preemptions_per_job": round(
                    (sw2["worker"][1] - sw0["worker"][1]) / max(1, completed), 2
                ),
                "context_switches": {"before": sw0, "after": sw2},
                "wall_s": round(wall, 2),
                "submit_s": round(submitted_s, 2),
                "submit_rps": load["rps"],
                "post_p50_ms": load["p50_ms"],
                "post_p99_ms": load["p99_ms"],
                "jobs_per_s": round(completed / wall, 1) if wall else None,
                "api_processes": api.processes(),
                "worker_processes": worker.processes(),
                "api_rss_mb": round(api.rss_mb(), 1),
                "worker_rss_mb": round(worker.rss_mb(), 1),
                "reference_cpu_ms": [reference_before, reference_after],
                "loadavg": [load_before, loadavg()],
                "profiled": bool(profilers),
                "api_idle_cpu_percent": idle_cpu[0],
                "worker_idle_cpu_percent": idle_cpu[1],
                "redis_calls_per_job": round(sum(redis_calls.values()) / max(1, accepted), 1),
                "redis_calls_by_command_per_job": {
                    k: round(v / max(1, accepted), 2)
                    for k, v in sorted(redis_calls.items(), key=lambda kv: -kv[1])
                },
            }
        )
        if db0 is not None and db2 is not None:
            # the shared database server's own CPU for this system's jobs (SecantusDB runs
            # in its own process; the window holds only this system's work)
            result["db_server_cpu_ms_per_job"] = round((db2 - db0) * 1000 / max(1, accepted), 3)
        if mongo0:
            # less this script's own reads of the job counts (one request each)
            requests = mongo2["requests"] - mongo0["requests"] - polls - 1
            result["mongo_requests_per_job"] = round(requests / max(1, accepted), 1)
            result["mongo_ops_per_job"] = {
                k: round((mongo2[k] - mongo0.get(k, 0)) / max(1, accepted), 2)
                for k in mongo2
                if k != "requests"
            }
        result["total_cpu_ms_per_job"] = round(
            result["api_cpu_ms_per_job"] + result["worker_cpu_ms_per_job"], 3
        )
        if counting:
            result["counted"] = True
            result["api_calls_per_job"] = round(
                calls_in(counted_file(label, "api")) / max(1, accepted)
            )
            result["worker_calls_per_job"] = round(
                calls_in(counted_file(label, "worker")) / max(1, completed)
            )
            log(
                f"{label}: Python calls per job (bench/counted.py): API "
                f"{result['api_calls_per_job']:,}, worker {result['worker_calls_per_job']:,}"
            )
        if profilers:
            cpu_s = {"api": api2 - api0, "worker": worker2 - worker0}
            result["profiles"] = {}
            for p in profilers:
                kind = p.out.name.rsplit("-", 1)[1].removesuffix(".txt")
                result["profiles"][kind] = {
                    "file": str(p.out),
                    **summarize_profile(p.out, top=args.profile_top),
                    "cpu_view": profile_cpu_view(
                        p.out, cpu_s[kind], args.profile_rate, args.profile_top
                    ),
                }
        log(
            f"{label}: {accepted} queued, {completed} completed, {failed} failed in "
            f"{wall:.1f} s; CPU per job: API {result['api_cpu_ms_per_job']:.2f} ms, worker "
            f"{result['worker_cpu_ms_per_job']:.2f} ms (reference workload "
            f"{reference_before}/{reference_after} ms, load {load_before} -> {loadavg()})"
        )
        if load.get("first_error"):
            log(f"{label}: warning: {result['rejected']} POSTs failed: {load['first_error']}")
        return result
    finally:
        await worker.stop()
        await api.stop()
        await probe.close()
        if admin is not None:
            await admin.close()
        await shared.redis[system].flushall()
        with contextlib.suppress(Exception):
            if store == "mongo":
                await shared.mongo.drop_database(store_env)
            else:
                await shared.sql[store].drop_database(store_env)


# --- the report --------------------------------------------------------------------------------
COUNTED_FIGURES = ("api_calls_per_job", "worker_calls_per_job")
FIGURES = (
    ("API CPU ms / queued job", "api_cpu_ms_per_job", 2),
    ("worker CPU ms / completed job", "worker_cpu_ms_per_job", 2),
    ("total CPU ms / job", "total_cpu_ms_per_job", 2),
    ("  API: kernel (sys) share", "api_sys_share", 2),
    ("  worker: kernel (sys) share", "worker_sys_share", 2),
    ("  API: preemptions / job", "api_preemptions_per_job", 2),
    ("  worker: preemptions / job", "worker_preemptions_per_job", 2),
    ("  API: CPU % while idle", "api_idle_cpu_percent", 1),
    ("  worker: CPU % while idle", "worker_idle_cpu_percent", 1),
    ("  API: Python calls / job", "api_calls_per_job", 0),
    ("  worker: Python calls / job", "worker_calls_per_job", 0),
    ("Redis commands / job (own Redis)", "redis_calls_per_job", 1),
    ("MongoDB requests / job", "mongo_requests_per_job", 1),
    ("MongoDB server CPU ms / job", "db_server_cpu_ms_per_job", 2),
    ("wall time s (submit + drain)", "wall_s", 1),
    ("jobs completed / s", "jobs_per_s", 1),
    ("POST accepted / s", "submit_rps", 0),
    ("POST p99 ms", "post_p99_ms", 1),
    ("jobs completed", "completed", 0),
    ("jobs failed or not accepted", "lost", 0),
    ("worker RSS MB", "worker_rss_mb", 0),
)


def _column(row: dict[str, Any]) -> str:
    return str(row["system"]) + ("" if row["store"] == "mongo" else f" ({row['store']})")


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """smartgen (MongoDB) ÷ the better peer, for the API and the worker."""
    by = {r["system"]: r for r in rows if r["store"] == "mongo" and "error" not in r}
    out: dict[str, Any] = {}
    if "smartgen" not in by:
        return out
    for key in ("api_cpu_ms_per_job", "worker_cpu_ms_per_job", "total_cpu_ms_per_job"):
        peers = [(by[p][key], p) for p in PEERS if p in by and by[p].get(key)]
        if not peers:
            continue
        best, name = min(peers)
        ratio = by["smartgen"][key] / best
        out[key] = {"ratio": round(ratio, 3), "better_peer": name, "met": ratio <= TARGET_RATIO}
    return out


def render(rows: list[dict[str, Any]], title: str) -> str:
    cols = [_column(r) for r in rows]
    width = max(12, *(len(c) + 2 for c in cols))
    ratio = ratios(rows)
    lines = [title]
    head = f"{'':31}" + "".join(f"{c:>{width}}" for c in cols)
    if ratio:
        head += "   smartgen ÷ better peer (target ≤ 0.5×)"
    lines.append(head)
    for name, key, digits in FIGURES:
        if key in COUNTED_FIGURES and not any(r.get(key) for r in rows):
            continue  # calls are counted only with --calls
        cells = []
        for r in rows:
            if "error" in r:
                cells.append(f"{'failed':>{width}}")
                continue
            value = r.get(key)
            if key == "lost":
                value = r.get("failed", 0) + r.get("rejected", 0)
            cells.append(f"{'—' if value is None else f'{value:,.{digits}f}':>{width}}")
        line = f"{name:31}" + "".join(cells)
        if key in ratio:
            x = ratio[key]
            line += f"   {x['ratio']:.2f}× {x['better_peer']:<11} {'met' if x['met'] else 'MISSED'}"
        lines.append(line)
    notes = []
    for r in rows:
        if "error" in r:
            notes.append(f"  {_column(r)}: FAILED: {r['error'][:300]}")
        elif r.get("reference_cpu_ms"):
            b, a = r["reference_cpu_ms"]
            notes.append(
                f"  {_column(r)}: machine speed (reference workload, lower is faster) {b}/{a} ms;"
                f" load average {r['loadavg'][0]} -> {r['loadavg'][1]}"
                + ("; PROFILED (py-spy attached)" if r.get("profiled") else "")
                + ("; COUNTED (cProfile on: CPU inflated)" if r.get("counted") else "")
            )
    return "\n".join(lines + notes)


def median_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    order: list[tuple[str, str]] = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rows in runs:
        for r in rows:
            which = (r["system"], r["store"])
            if which not in groups:
                order.append(which)
                groups[which] = []
            if "error" not in r:
                groups[which].append(r)
    out = []
    for system, store in order:
        ok = groups[(system, store)]
        if not ok:
            out.append({"system": system, "store": store, "error": "every run failed"})
            continue
        row: dict[str, Any] = {"system": system, "store": store, "runs": len(ok)}
        for _, key, _ in FIGURES:
            if key == "lost":
                row["failed"] = max(r.get("failed", 0) for r in ok)
                row["rejected"] = max(r.get("rejected", 0) for r in ok)
                continue
            values = [r[key] for r in ok if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        out.append(row)
    return out


# Leaf frames that are a write to a loopback socket (the syscall runs with the GIL held).
# py-spy samples wall time: a write that wakes the receiving process (SecantusDB, Redis,
# the load generator) often gets its writer preempted on this 2-core machine while still
# "running" with the GIL held, so these leaves collect far more samples than CPU time.
WRITE_LEAVES = frozenset(
    {
        "StreamWriter.writelines",  # asyncio streams: redis-py
        "StreamWriter._writelines",  # aiohttp
        "PyMongoProtocol.write",  # pymongo (write + resume_reading)
        "RequestResponseCycle.send",  # uvicorn: the HTTP answer
    }
)


def profile_cpu_view(path: Path, cpu_s: float, rate: int, top: int) -> dict[str, Any]:
    """py-spy's samples set against the CPU time /proc counted, and where the samples go
    once those in a socket write are left out (an estimate of the on-CPU distribution):
    own time by library, and smartgen's and bullmq's functions inclusive."""
    total = writes = 0
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    with contextlib.suppress(OSError), path.open() as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_short_frame(fr) for fr in stack.split(";")]
            if frames[-1].split(" (")[0] in WRITE_LEAVES:
                writes += count
                continue
            package = _package(frames[-1])
            own[package] = own.get(package, 0) + count
            for frame in set(frames):
                name = frame.split(" (")[0]
                if ("(smartgen/" in frame or "(bullmq/" in frame) and name not in ENTRY_FRAMES:
                    inclusive[frame] = inclusive.get(frame, 0) + count
    rest = max(1, total - writes)

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        rows = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(k, round(100 * v / rest, 1)) for k, v in rows]

    return {
        "sampled_s": round(total / rate, 2),
        "cpu_s": round(cpu_s, 2),
        "write_leaf_share": round(100 * writes / max(1, total), 1),
        "own_by_library_without_writes": ranked(own),
        "smartgen_bullmq_inclusive_without_writes": ranked(inclusive),
    }


def print_profiles(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        for kind, prof in (r.get("profiles") or {}).items():
            print(f"\n== profile: {r['label']} {kind} ({prof['samples']} samples with the GIL held;"
                  f" {prof['file']})")  # fmt: skip
            for title, key in (
                ("own time by library", "by_library"),
                ("own time by function", "own"),
                ("smartgen's functions, inclusive", "smartgen_inclusive"),
            ):
                print(f"  {title}:")
                for name, share in prof[key]:
                    print(f"    {share:5.1f}%  {name}")
            view = prof.get("cpu_view")
            if not view:
                continue
            print(
                f"  py-spy sampled {view['sampled_s']} s with the GIL held while /proc counted "
                f"{view['cpu_s']} s of CPU; {view['write_leaf_share']}% of the samples are in a "
                "socket write (mostly preempted, off CPU). Without those:"
            )
            for title, key in (
                ("own time by library", "own_by_library_without_writes"),
                (
                    "smartgen's and bullmq's functions, inclusive",
                    "smartgen_bullmq_inclusive_without_writes",
                ),
            ):
                print(f"  {title}:")
                for name, share in view[key]:
                    print(f"    {share:5.1f}%  {name}")


# --- main --------------------------------------------------------------------------------------
async def run(args: argparse.Namespace, cleanup: Cleanup) -> int:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := set(systems) - set(SYSTEMS):
        raise SystemExit(f"unknown systems: {', '.join(sorted(unknown))} (of {', '.join(SYSTEMS)})")
    stores = [s.strip() for s in (args.store or "").split(",") if s.strip()]
    if unknown := set(stores) - {"postgres", "sqlite"}:
        raise SystemExit(f"--store: postgres and/or sqlite, not {', '.join(sorted(unknown))}")
    profile_prefix = None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    if args.calls:
        global COUNTED_PREFIX
        COUNTED_PREFIX = results_dir / f"{stamp}-peers-calls"
    if args.profile:
        if not Profiler.available():
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        profile_prefix = results_dir / f"{stamp}-peers-profile"

    ws = Workspace(cleanup, keep=args.keep)
    log(f"workspace {ws.dir}; load average {loadavg()}")
    peer_dirs: dict[str, Path] = {}
    installs = [p for p in PEERS if p in systems]
    dirs = await asyncio.gather(
        *(install_peer(p, Path(args.peers), Path(args.cache), ws, force=args.reinstall)
          for p in installs)
    )  # fmt: skip
    peer_dirs = dict(zip(installs, dirs, strict=True))

    # Shared services: SecantusDB, the fake LLM, one redis-server per system.
    mongo = MongoBackend(ws)
    llm = FakeLLM(ws, latency_ms=0)
    redis: dict[str, Redis] = {}
    for system in systems:
        sub = ws.dir / f"redis-{system}"
        sub.mkdir()
        redis[system] = Redis(SimpleNamespace(dir=sub, logs=ws.logs, cleanup=cleanup))  # type: ignore[arg-type]
    sql: dict[str, StoreBackend] = {}
    for store in stores:
        if store == "postgres":
            backend: StoreBackend = PostgresBackend(ws)
            backend.prefix = f"smartgen_peers_{secrets.token_hex(4)}"  # type: ignore[attr-defined]
        else:
            backend = SqliteBackend(ws)
        sql[store] = backend
    await asyncio.gather(
        mongo.start(), llm.start(), *(r.start() for r in redis.values()),
        *(b.start() for b in sql.values()),
    )  # fmt: skip
    shared = Shared(ws, mongo, llm, redis, secrets.token_hex(32), peer_dirs, sql)
    plan = [(s, "mongo") for s in systems]
    if "smartgen" in systems or stores:
        plan += [("smartgen", st) for st in stores]
    versions = {"smartgen": smartgen_version()}
    versions.update({p: peer_versions(p, d) for p, d in peer_dirs.items()})
    result: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "versions": versions,
        "store": await mongo.describe(),
        "plan": {
            "systems": systems,
            "extra_stores": stores,
            "jobs": args.jobs,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "users": args.users,
            "worker_concurrency": args.worker_concurrency,
            "repeat": args.repeat,
            "profile": args.profile,
        },
        "runs": [],
    }
    runs: list[list[dict[str, Any]]] = []
    first = True
    for run_no in range(1, args.repeat + 1):
        rows = []
        for system, store in plan:
            if not first:
                log(f"between systems: {await wait_idle(limit_s=args.idle_limit)}")
            first = False
            try:
                rows.append(await measure(system, store, shared, args, run_no, profile_prefix))
            except (KeyboardInterrupt, asyncio.CancelledError):
                raise
            except Exception as exc:
                log(f"r{run_no}-{system} ({store}) FAILED: {type(exc).__name__}: {exc}")
                rows.append(
                    {"system": system, "store": store, "run": run_no,
                     "error": f"{type(exc).__name__}: {str(exc)[:3000]}"}
                )  # fmt: skip
        runs.append(rows)
        result["runs"].append(rows)
        title = (
            f"\n== run {run_no} of {args.repeat}: {args.jobs} jobs, {args.concurrency} "
            f"connections, WORKER_CONCURRENCY={args.worker_concurrency}, MongoDB = SecantusDB"
        )
        print(render(rows, title))
        print_profiles(rows)
        sys.stdout.flush()
    if args.repeat > 1:
        med = median_rows(runs)
        result["median"] = med
        result["median_ratios"] = ratios(med)
        print(render(med, f"\n== median of {args.repeat} runs"))
    else:
        result["ratios"] = ratios(runs[0])
    result["finished_at"] = datetime.now(UTC).isoformat()
    path = results_dir / f"{stamp}-peers.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(
        "\nSecantusDB is a MongoDB wire-protocol TEST server: throughput is not MongoDB's; "
        "the CPU per job is that of each system's own processes."
    )
    print(f"JSON: {path}")
    return 1 if any("error" in r for rows in runs for r in rows) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description="smartgen vs the reference peers: CPU per job")
    parser.add_argument("--jobs", type=int, default=592, help="measured jobs per system (592)")
    parser.add_argument("--warmup", type=int, default=96, help="warm-up jobs per system (96)")
    parser.add_argument("--concurrency", type=int, default=16, help="POST connections (16)")
    parser.add_argument("--users", type=int, default=32, help="token users, round robin (32)")
    parser.add_argument("--worker-concurrency", type=int, default=50, help="every worker (50)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs; median printed")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}"
    )
    parser.add_argument(
        "--store", nargs="?", const="postgres,sqlite", default="",
        help="also smartgen on postgres and/or sqlite (bare --store: both)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="py-spy on smartgen's processes")
    parser.add_argument(
        "--calls", action="store_true",
        help="count smartgen's Python calls per job in the window (bench/counted.py)",
    )  # fmt: skip
    parser.add_argument("--profile-rate", type=int, default=200)
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument(
        "--idle-limit", type=float, default=60, help="longest wait for an idle machine (60 s)"
    )
    parser.add_argument("--peers", default=str(DEFAULT_PEERS_DIR), help="the peers' folder")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="installed peers (outside git)")
    parser.add_argument("--reinstall", action="store_true", help="reinstall the peers' copies")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (logs)")
    parser.add_argument(
        "--src",
        help="run smartgen's processes from this src/ directory (PYTHONPATH) instead of the "
        "installed package: for before/after comparisons of a change",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a setting for smartgen's processes (repeatable), e.g. METRICS_ENABLED=false",
    )  # fmt: skip
    args = parser.parse_args()
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.isupper():
            parser.error(f"--set {item}: NAME=VALUE, the setting's environment variable")
        SMARTGEN_SET[name] = value
    if args.src:
        global SMARTGEN_SRC
        SMARTGEN_SRC = os.path.abspath(args.src)
        if not os.path.isdir(os.path.join(SMARTGEN_SRC, "smartgen")):
            parser.error(f"--src {args.src}: no smartgen package there")
    if args.profile and "smartgen" not in args.systems:
        parser.error("--profile profiles smartgen: include it in --systems")
    return run_main(lambda cleanup: run(args, cleanup))


if __name__ == "__main__":
    sys.exit(main())
