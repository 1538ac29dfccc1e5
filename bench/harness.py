"""What the benchmark suite and the soak start and measure: a private redis-server, the
store (PostgreSQL database of our own, SQLite file, or the SecantusDB test server), the
fake LLM server, real `smartgen api` / `smartgen worker` processes, and readers of
/proc (CPU time, RSS) and of the store (job states and timestamps).

Everything started is registered with a `Cleanup`, which stops processes (by pid), drops
databases and removes temporary directories, also on Ctrl-C or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def log(message: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def run_main(run: Callable[[Cleanup], Any]) -> int:
    """A benchmark script's entry: signals, file-descriptor limit, `run(cleanup)` on uvloop
    when available, and the clean-up always (also on Ctrl-C)."""
    install_signal_handlers()
    raise_fd_limit()
    cleanup = Cleanup()
    try:
        try:
            import uvloop

            return int(uvloop.run(run(cleanup)))
        except ImportError:  # pragma: no cover
            return int(asyncio.run(run(cleanup)))
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        cleanup.run()


# --- clean-up ----------------------------------------------------------------------------
class Cleanup:
    """Undo actions, run last-in first-out, each at most once, errors reported not raised."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], Any]]] = []

    def push(self, label: str, action: Callable[[], Any]) -> None:
        self._actions.append((label, action))

    def run(self) -> None:
        while self._actions:
            label, action = self._actions.pop()
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    asyncio.run(result)
            except Exception as exc:
                print(f"cleanup: {label}: {type(exc).__name__}: {exc}", file=sys.stderr)


def install_signal_handlers() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt at once, wherever the main thread is
    (asyncio's own SIGINT handler only cancels the main task, which a library may
    swallow); the script's `Cleanup` then stops and removes everything."""

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Children get SIGTERM if this process dies without cleaning up (e.g. SIGKILL).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


# --- processes ---------------------------------------------------------------------------
class Proc:
    """A child process (own session, so Ctrl-C reaches only us), output in a log file."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str] | None,
        cwd: str | Path,
        log_dir: Path,
        cleanup: Cleanup,
        stop_timeout: float = 20.0,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{int(time.time() * 1000) % 10**8}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=str(cwd),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.popen.pid
        self.stop_timeout = stop_timeout
        cleanup.push(f"stop {name} ({self.pid})", self.stop)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def pids(self) -> list[int]:
        """The process and its children (a multi-process API's workers)."""
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
            return [self.pid, *(int(p) for p in children.split())]
        return [self.pid]

    def cpu_seconds(self) -> float:
        """user + system CPU time of the process (all its threads) and its children."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
                text = f.read()
                fields = text[text.rfind(")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def _status_kb(self, key: str) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += float(line.split()[1])
        return total

    def rss_mb(self) -> float:
        """Resident memory of the process and its children."""
        return self._status_kb("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return self._status_kb("VmHWM") / 1024

    def stop(self, timeout: float | None = None) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout or self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    async def wait_for_output(self, text: str, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
            await asyncio.sleep(0.02)
        raise RuntimeError(f"{self.name}: no {text!r} within {within:.0f} s:\n{self.output()}")


async def wait_port(port: int, proc: Proc, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.output()[-3000:]}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {within:.0f} s")


class Workspace:
    """A temporary directory for logs, data files and working directories."""

    def __init__(self, cleanup: Cleanup, *, keep: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="smartgen-bench-"))
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.cleanup = cleanup
        if not keep:
            cleanup.push("remove workspace", lambda: shutil.rmtree(self.dir, ignore_errors=True))


# --- Redis ---------------------------------------------------------------------------------
class Redis:
    def __init__(self, ws: Workspace) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
        self.port = free_port()
        data = ws.dir / f"redis-{self.port}"  # one per server: a run may start several
        data.mkdir()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data),
            "--maxmemory-policy", "noeviction",
            "--maxclients", "20000",
        ]  # fmt: skip
        self.proc = Proc("redis", args, env=None, cwd=data, log_dir=ws.logs, cleanup=ws.cleanup)

    async def start(self) -> None:
        await wait_port(self.port, self.proc)

    async def flushall(self) -> None:
        from redis import asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    async def command_counts(self, *, reset: bool = False) -> dict[str, int]:
        """Calls per command since the last reset (INFO commandstats), then reset if asked.
        Scripts count as EVALSHA plus the commands they run (`redis.call` inside)."""
        from redis import asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            stats = await client.info("commandstats")
            if reset:
                await client.config_resetstat()
        finally:
            await client.aclose()
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if isinstance(value, dict)
        }


# --- the fake LLM -------------------------------------------------------------------------
class FakeLLM:
    def __init__(self, ws: Workspace, *, latency_ms: float = 0.0) -> None:
        self.port = free_port()
        args = [
            PYTHON,
            str(BENCH / "llmserver.py"),
            "--port",
            str(self.port),
            "--latency-ms",
            str(latency_ms),
        ]
        self.proc = Proc("fakellm", args, env=None, cwd=ws.dir, log_dir=ws.logs, cleanup=ws.cleanup)
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"

    async def start(self) -> None:
        await wait_port(self.port, self.proc)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, self.url + path, json=body) as response,
        ):
            return await response.json(content_type=None)

    async def configure(self, **conf: Any) -> None:
        await self._call("POST", "/_control", conf)

    async def release(self) -> None:
        await self._call("POST", "/_release")

    async def reset(self) -> None:
        await self._call("POST", "/_reset")

    async def stats(self, *, markers: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "GET", "/_stats" + ("?markers=1" if markers else "")
        )
        return result


# --- stores --------------------------------------------------------------------------------
class Probe:
    """Reads jobs straight from the store (not through the API, whose CPU we measure)."""

    async def counts(self) -> dict[str, int]:
        raise NotImplementedError

    async def jobs(self) -> list[dict[str, Any]]:
        """Every job: job_id, user_id, status, scheduled_for, started_at, completed_at,
        failed_at, attempts (datetimes aware UTC)."""
        raise NotImplementedError

    async def sample(self, limit: int) -> list[tuple[str, str]]:
        """(user_id, job_id) pairs."""
        raise NotImplementedError

    async def leases(self) -> dict[str, str | None]:
        """job_id -> lease owner (`<message>@<worker>`) of every `processing` job."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class SqlProbe(Probe):
    """Plain SQL on a connection of its own per read (asyncpg, or sqlite3 in a thread):
    independent of smartgen's code, so a before/after run (`--src`) reads both alike."""

    COLUMNS = (
        "job_id, user_id, status, scheduled_for, started_at, completed_at, failed_at, attempts"
    )

    def __init__(self, database_url: str) -> None:
        scheme, _, rest = database_url.partition("://")
        self.sqlite = scheme.startswith("sqlite")
        self.target = rest[1:] if self.sqlite else "postgresql://" + rest

    async def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.sqlite:
            import sqlite3

            def read() -> list[tuple[Any, ...]]:
                conn = sqlite3.connect(self.target, timeout=30)
                try:
                    return [tuple(r) for r in conn.execute(sql).fetchall()]
                finally:
                    conn.close()

            return await asyncio.to_thread(read)
        import asyncpg

        conn = await asyncpg.connect(self.target, timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    @staticmethod
    def _dt(value: Any) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value.astimezone(UTC) if isinstance(value, datetime) else None
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)

    async def counts(self) -> dict[str, int]:
        rows = await self._rows("SELECT status, count(*) FROM jobs GROUP BY status")
        return {str(status): int(n) for status, n in rows}

    async def jobs(self) -> list[dict[str, Any]]:
        names = [c.strip() for c in self.COLUMNS.split(",")]
        out = []
        for row in await self._rows(f"SELECT {self.COLUMNS} FROM jobs"):
            job = dict(zip(names, row, strict=True))
            for key in ("scheduled_for", "started_at", "completed_at", "failed_at"):
                job[key] = self._dt(job[key])
            out.append(job)
        return out

    async def sample(self, limit: int) -> list[tuple[str, str]]:
        rows = await self._rows(f"SELECT user_id, job_id FROM jobs LIMIT {int(limit)}")
        return [(str(u), str(j)) for u, j in rows]

    async def leases(self) -> dict[str, str | None]:
        rows = await self._rows("SELECT job_id, lease_owner FROM jobs WHERE status = 'processing'")
        return {str(j): (None if o is None else str(o)) for j, o in rows}


class MongoProbe(Probe):
    def __init__(self, uri: str) -> None:
        from pymongo import AsyncMongoClient

        self.client: Any = AsyncMongoClient(uri, tz_aware=True)
        self.db = self.client.get_default_database()

    async def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        cursor = await self.db["jobs"].aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
        async for doc in cursor:
            out[str(doc["_id"])] = int(doc["n"])
        return out

    async def jobs(self) -> list[dict[str, Any]]:
        names = {
            "jobId": "job_id",
            "userId": "user_id",
            "status": "status",
            "scheduledFor": "scheduled_for",
            "startedAt": "started_at",
            "completedAt": "completed_at",
            "failedAt": "failed_at",
            "attempts": "attempts",
        }
        projection = dict.fromkeys(names, 1)
        out = []
        async for doc in self.db["jobs"].find({}, projection):
            out.append({ours: doc.get(theirs) for theirs, ours in names.items()})
        return out

    async def sample(self, limit: int) -> list[tuple[str, str]]:
        cursor = self.db["jobs"].find({}, {"userId": 1, "jobId": 1}).limit(limit)
        return [(str(d["userId"]), str(d["jobId"])) async for d in cursor]

    async def leases(self) -> dict[str, str | None]:
        cursor = self.db["jobs"].find({"status": "processing"}, {"jobId": 1, "leaseOwner": 1})
        return {str(d["jobId"]): d.get("leaseOwner") async for d in cursor}

    async def close(self) -> None:
        await self.client.close()


class StoreBackend:
    """One store kind; `database(label)` gives a fresh database for one measurement."""

    kind = ""
    note = ""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    async def start(self) -> None:
        pass

    async def database(self, label: str) -> dict[str, str]:
        raise NotImplementedError

    async def drop_database(self, env: dict[str, str]) -> None:
        """Free a measurement's database once it is done (the next one starts afresh)."""

    def probe(self, env: dict[str, str]) -> Probe:
        if "MONGO_URI" in env:
            return MongoProbe(env["MONGO_URI"])
        return SqlProbe(env["DATABASE_URL"])

    async def describe(self) -> str:
        return self.kind


class PostgresBackend(StoreBackend):
    kind = "postgres"

    def __init__(self, ws: Workspace) -> None:
        super().__init__(ws)
        self.prefix = f"smartgen_bench_{secrets.token_hex(4)}"
        self.created: list[str] = []

    async def _admin(self) -> Any:
        import asyncpg

        return await asyncpg.connect(PG_ADMIN_URL, timeout=5)

    async def start(self) -> None:
        try:
            conn = await self._admin()
        except Exception as exc:
            raise SystemExit(
                f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); "
                "set BENCH_PG_URL or use --store sqlite"
            ) from None
        await conn.close()

    async def database(self, label: str) -> dict[str, str]:
        name = f"{self.prefix}_{label}"
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.created.append(name)
        self.ws.cleanup.push(f"drop database {name}", lambda: self.drop_sync(name))
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        return {"DATABASE_URL": f"{base}/{name}"}

    async def drop_database(self, env: dict[str, str]) -> None:
        await self.drop(env["DATABASE_URL"].rsplit("/", 1)[1])

    async def drop(self, name: str) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def drop_sync(self, name: str) -> None:
        asyncio.run(self.drop(name))

    async def describe(self) -> str:
        conn = await self._admin()
        try:
            version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        return f"PostgreSQL {version} (127.0.0.1:5432, databases {self.prefix}_*)"


class SqliteBackend(StoreBackend):
    kind = "sqlite"

    async def database(self, label: str) -> dict[str, str]:
        path = self.ws.dir / f"{label}.db"
        return {"DATABASE_URL": f"sqlite:///{path}"}

    async def drop_database(self, env: dict[str, str]) -> None:
        path = env["DATABASE_URL"].removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.remove(path + suffix)

    async def describe(self) -> str:
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version} (WAL, file in a temporary directory)"


class MongoBackend(StoreBackend):
    kind = "mongo"
    note = (
        "MongoDB here is SecantusDB, a MongoDB wire-protocol test server: its speed is NOT "
        "representative of MongoDB's; read these figures as the cost of our code only"
    )

    def __init__(self, ws: Workspace) -> None:
        super().__init__(ws)
        self.port = free_port()
        self.proc: Proc | None = None

    async def start(self) -> None:
        binary = Path(PYTHON).with_name("secantusd-py")
        if not binary.exists():
            raise SystemExit("SecantusDB is not installed: .venv/bin/pip install -e '.[test]'")
        data = self.ws.dir / "secantus"
        data.mkdir()
        args = [
            str(binary),
            "--standalone",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--storage-path", str(data),
            "--log-level", "WARNING",
        ]  # fmt: skip
        self.proc = Proc(
            "secantusdb", args, env=None, cwd=data, log_dir=self.ws.logs, cleanup=self.ws.cleanup
        )
        await wait_port(self.port, self.proc, within=60)

    async def database(self, label: str) -> dict[str, str]:
        return {"MONGO_URI": f"mongodb://127.0.0.1:{self.port}/bench_{label}"}

    async def drop_database(self, env: dict[str, str]) -> None:
        from pymongo import AsyncMongoClient

        client: Any = AsyncMongoClient(env["MONGO_URI"], serverSelectionTimeoutMS=5000)
        try:
            await client.drop_database(client.get_default_database().name)
        finally:
            await client.close()

    async def describe(self) -> str:
        from importlib.metadata import version

        return f"SecantusDB {version('SecantusDB')} standalone (MongoDB wire protocol; test server)"


BACKENDS: dict[str, type[StoreBackend]] = {
    "postgres": PostgresBackend,
    "sqlite": SqliteBackend,
    "mongo": MongoBackend,
}


# --- smartgen processes -------------------------------------------------------------------
def _setting_names() -> set[str]:
    from smartgen.config import Settings

    return {name.upper() for name in Settings.model_fields}


def smartgen_env(
    *,
    redis_url: str,
    store_env: dict[str, str],
    llm_base_url: str,
    jwt_secret: str,
    queue_prefix: str,
    **extra: str,
) -> dict[str, str]:
    """The environment of one system's processes; nothing leaks in from the caller's
    environment (no stray MONGO_URI, no .env: processes run in a temporary directory)."""
    names = _setting_names()
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(
        {
            "REDIS_URL": redis_url,
            "BASE_URL": llm_base_url,
            "LLM_PROVIDER": "openai",
            "OPENROUTER_MODEL": "bench/fake-model",
            "JWT_SECRET": jwt_secret,
            "QUEUE_PREFIX": queue_prefix,
            "GENERATION_DELAY_SECONDS": "0",
            # On by default in production, so its Redis call per POST stays in the
            # measured path; no benchmark user comes near this many in a minute.
            "GENERATE_RATE_LIMIT": str(GENERATE_LIMIT),
            # Every benchmark client is one address: per-address limits out of reach too.
            "GENERATE_IP_RATE_LIMIT": str(GENERATE_LIMIT),
            "SAVE_RATE_LIMIT": str(GENERATE_LIMIT),
            # The flood limits stay on, out of reach of the benchmarks' own load (thousands
            # of idle websockets on one process, a sync per reconnecting client).
            "HTTP_MAX_CONNECTIONS": "1000000",
            "SOCKETIO_MAX_SOCKETS_PER_USER": "1000000",
            "SOCKETIO_SYNC_RATE_LIMIT": "1000000000",
            # Every benchmark client is one address (bench/memory.py opens 10,000 sessions).
            "SOCKETIO_IP_SESSION_RATE_LIMIT": "1000000000",
            "REGISTER_IP_RATE_LIMIT": "0",
            "LOGIN_RATE_LIMIT": "0",
            "LOGIN_EMAIL_FAILURE_LIMIT": "0",
            "LOGIN_IP_RATE_LIMIT": "0",
            "LOG_LEVEL": "info",
            "HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(store_env)
    env.update({k: str(v) for k, v in extra.items()})
    return env


# The per-user limit of queued generations per minute in every benchmark.
GENERATE_LIMIT = 1_000_000_000


class Smartgen:
    """`python -m smartgen api|worker` processes of one system."""

    def __init__(self, ws: Workspace, env: dict[str, str]) -> None:
        self.ws = ws
        self.env = env
        self.cwd = ws.dir / f"cwd-{secrets.token_hex(3)}"
        self.cwd.mkdir()

    def _spawn(self, name: str, command: str, env: dict[str, str], **kw: Any) -> Proc:
        return Proc(
            name,
            [PYTHON, "-m", "smartgen", command],
            env=env,
            cwd=self.cwd,
            log_dir=self.ws.logs,
            cleanup=self.ws.cleanup,
            **kw,
        )

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        return {**self.env, **{k: str(v) for k, v in extra.items()}}

    async def api(self, name: str = "api", **extra: str) -> tuple[Proc, str]:
        port = free_port()
        proc = self._spawn(name, "api", self._env({"PORT": str(port), **extra}))
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, proc)
        return proc, url

    async def worker(self, name: str = "worker", *, ready: bool = True, **extra: str) -> Proc:
        env = self._env(extra)
        stop_timeout = float(env.get("SHUTDOWN_GRACE_SECONDS", "30")) + 15
        proc = self._spawn(name, "worker", env, stop_timeout=stop_timeout)
        if ready:
            await proc.wait_for_output("worker ready", 60)
        return proc


async def wait_healthy(url: str, proc: Proc, within: float = 60.0) -> None:
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


@dataclass
class User:
    email: str
    user_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def register_users(urls: list[str], n: int, *, tag: str = "bench") -> list[User]:
    """Register `n` users (spread over `urls`), a few at a time (argon2 is costly)."""
    run = secrets.token_hex(3)
    semaphore = asyncio.Semaphore(8)

    async def one(session: aiohttp.ClientSession, i: int) -> User:
        email = f"{tag}-{run}-{i}@example.com"
        body = {"email": email, "password": "benchmark password"}
        async with semaphore:
            for attempt in range(5):
                try:
                    async with session.post(urls[i % len(urls)] + "/auth/register", json=body) as r:
                        data = await r.json(content_type=None)
                        if r.status != 201:
                            raise RuntimeError(f"register: HTTP {r.status}: {data}")
                        return User(email, data["user"]["id"], data["token"])
                except (aiohttp.ClientError, TimeoutError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5)
        raise AssertionError("unreachable")

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return list(await asyncio.gather(*(one(session, i) for i in range(n))))


async def create_accounts(env: dict[str, str], users: list[User]) -> None:
    """Accounts in the system's store for minted users (the API refuses a token whose user
    does not exist), written straight to the store: no argon2 per user. Their password
    hash matches no password: they can only use their tokens."""
    from smartgen.config import Settings
    from smartgen.kit.times import utcnow
    from smartgen.models import User as Account
    from smartgen.store import open_store

    names = _setting_names()
    values = {k.lower(): v for k, v in env.items() if k.upper() in names}
    settings = Settings(_env_file=None, **values)  # type: ignore[arg-type]
    store = open_store(settings)
    try:
        await store.init()
        now = utcnow()
        for start in range(0, len(users), 200):
            await asyncio.gather(
                *(
                    store.users.create(
                        Account(u.user_id, u.email, password_hash="!minted", created_at=now)
                    )
                    for u in users[start : start + 200]
                )
            )
    finally:
        await store.close()


def mint_users(secret: str, n: int) -> list[User]:
    """Tokens for `n` users (signed with the API's JWT_SECRET by the API's own codec):
    enough users that none reaches MAX_UNFINISHED_JOBS. Give them accounts with
    `create_accounts` before they use the API."""
    from bson import ObjectId

    from smartgen.auth.tokens import TokenCodec

    codec = TokenCodec(secret, expires_minutes=24 * 60)
    users = []
    for _ in range(n):
        user_id = str(ObjectId())
        users.append(User(f"{user_id}@minted.invalid", user_id, codec.issue(user_id)[0]))
    return users


async def wait_final(
    probe: Probe, total: int, within: float, *, poll: float = 0.25
) -> tuple[dict[str, int], bool]:
    """Poll the store until `total` jobs are completed or failed (or `within` passed)."""
    deadline = time.monotonic() + within
    counts: dict[str, int] = {}
    while True:
        counts = await probe.counts()
        if counts.get("completed", 0) + counts.get("failed", 0) >= total:
            return counts, True
        if time.monotonic() > deadline:
            return counts, False
        await asyncio.sleep(poll)


# --- figures -------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms_between(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    from smartgen.kit.times import as_utc

    return (as_utc(later) - as_utc(earlier)).total_seconds() * 1000


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


async def wait_idle(
    *, idle_share: float = 0.9, window_s: float = 0.5, limit_s: float = 30.0
) -> str:
    """Wait until the machine's CPUs are at least `idle_share` idle over `window_s` (or
    `limit_s` passed): what one phase leaves running (PostgreSQL's checkpoint after a
    dropped database, Redis freeing a flushed keyspace) must not be counted in the next
    phase's CPU figures. Returns a line saying how it went."""
    began = time.monotonic()
    share = 0.0
    while True:
        idle0, total0 = _cpu_times()
        await asyncio.sleep(window_s)
        idle1, total1 = _cpu_times()
        share = (idle1 - idle0) / max(1, total1 - total0)
        waited = time.monotonic() - began
        if share >= idle_share:
            return f"machine idle ({share:.0%}) after {waited:.1f} s"
        if waited >= limit_s:
            return f"machine still busy after {waited:.0f} s ({share:.0%} idle); measuring anyway"


_REFERENCE_DOC = {
    "jobId": "0" * 36,
    "status": "completed",
    "usage": {"prompt_tokens": 12, "completion_tokens": 340, "total_tokens": 352},
    "generatedContent": "word " * 200,
}


def reference_cpu_ms(rounds: int = 3) -> float:
    """CPU time (ms) of a fixed pure-Python workload of the kind our processes run (JSON,
    dicts, strings, small lists), the least of `rounds`: how fast this machine runs such
    code right now. On a shared VM it moves by a third within minutes; the cost phase
    prints it beside its figures so that runs can be compared (lower is faster)."""
    import json

    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        for i in range(3000):
            doc = json.loads(json.dumps(_REFERENCE_DOC))
            doc["n"] = i
            "-".join(sorted(doc))
            _ = [x * 2 for x in range(50)]
        best = min(best, time.process_time() - began)
    return round(best * 1000, 1)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    redis_version = ""
    binary = shutil.which("redis-server")
    if binary:
        with contextlib.suppress(Exception):
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
            redis_version = out.stdout.split()[2].removeprefix("v=")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "redis": redis_version,
    }


# --- Socket.IO ------------------------------------------------------------------------------
class Listener:
    """One user's Socket.IO connection, counting final events per job, and noting every
    numbered event it receives (`seq`, asked for at the handshake) for the catch-up."""

    def __init__(self, url: str, user: User) -> None:
        import socketio

        self.url = url
        self.user = user
        self.sio = socketio.AsyncClient(
            reconnection=True, reconnection_delay=0.5, reconnection_delay_max=2, handle_sigint=False
        )
        self.final: dict[str, list[str]] = {}  # jobId -> ["completed" | "failed", …]
        self.final_at: dict[str, float] = {}
        # seq -> (event, jobId): what arrived live, numbered; the catch-up adds the rest
        self.numbered: dict[int, tuple[str, str]] = {}
        self.status_events = 0
        self.foreign = 0  # events about another user's jobs (must stay 0)
        self.connects = 0
        self.disconnects = 0
        # (disconnected at, reconnected at or None): events sent meanwhile are lost
        self.gaps: list[tuple[float, float | None]] = []
        self.sio.on("job_completed", self._final("completed"))
        self.sio.on("job_failed", self._final("failed"))
        self.sio.on("job_status", self._status)
        self.sio.on("connect", self._connected)
        self.sio.on("disconnect", self._disconnected)

    def _final(self, kind: str) -> Callable[[Any], Any]:
        async def handler(data: Any) -> None:
            if data.get("userId") != self.user.user_id:
                self.foreign += 1
            job_id = str(data.get("jobId"))
            self.final.setdefault(job_id, []).append(kind)
            self.final_at.setdefault(job_id, time.time())
            self._number(f"job_{kind}", data)

        return handler

    def _number(self, event: str, data: Any) -> None:
        if isinstance(data.get("seq"), int):
            self.numbered[data["seq"]] = (event, str(data.get("jobId")))

    async def _status(self, data: Any) -> None:
        self.status_events += 1
        if data.get("userId") != self.user.user_id:
            self.foreign += 1
        self._number("job_status", data)

    async def catch_up(self, page: int = 500) -> tuple[dict[int, tuple[str, str]], bool]:
        """Everything the user's event log holds (`sync` with `afterSeq`, page by page),
        merged with what arrived live: seq -> (event, jobId); and whether the log held
        everything (nothing trimmed)."""
        merged = dict(self.numbered)
        after, complete = 0, True
        while True:
            reply = await self.sio.call("sync", {"afterSeq": after}, timeout=30)
            events = reply.get("events", [])
            for item in events:
                merged[int(item["seq"])] = (item["event"], str(item["data"].get("jobId")))
            if not events:
                complete = complete and bool(reply.get("complete"))
                return merged, complete
            if events[0]["seq"] != after + 1:
                complete = False
            after = events[-1]["seq"]
            if len(events) < page and reply.get("complete"):
                return merged, complete

    async def _connected(self) -> None:
        self.connects += 1
        if self.gaps and self.gaps[-1][1] is None:
            self.gaps[-1] = (self.gaps[-1][0], time.time())

    async def _disconnected(self, *args: Any) -> None:
        self.disconnects += 1
        self.gaps.append((time.time(), None))

    def was_disconnected(self, at: float, margin: float = 1.0) -> bool:
        return any(
            start - margin <= at <= (end if end is not None else float("inf")) + margin
            for start, end in self.gaps
        )

    async def connect(self) -> None:
        await self.sio.connect(
            self.url,
            auth={"token": self.user.token, "seq": True},
            transports=["websocket"],
            wait_timeout=20,
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.disconnect(), 5)


async def connect_listeners(pairs: list[tuple[str, User]]) -> list[Listener]:
    listeners = [Listener(url, user) for url, user in pairs]
    semaphore = asyncio.Semaphore(20)

    async def one(listener: Listener) -> None:
        async with semaphore:
            await listener.connect()

    await asyncio.gather(*(one(listener) for listener in listeners))
    return listeners


async def close_listeners(listeners: list[Listener]) -> None:
    await asyncio.gather(*(listener.close() for listener in listeners))


# --- profiling ------------------------------------------------------------------------------
class Profiler:
    """`py-spy record` on one process while a block runs; collapsed stacks to `out`."""

    def __init__(self, pid: int, out: Path, *, rate: int = 200) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.proc: asyncio.subprocess.Process | None = None

    @staticmethod
    def available() -> bool:
        return Path(PYTHON).with_name("py-spy").exists() or shutil.which("py-spy") is not None

    async def __aenter__(self) -> Profiler:
        binary = Path(PYTHON).with_name("py-spy")
        exe = str(binary) if binary.exists() else "py-spy"
        self.proc = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(self.pid), "--format", "raw", "--nolineno",
            "--rate", str(self.rate), "--nonblocking", "--gil", "-o", str(self.out),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        await asyncio.sleep(0.3)  # attach
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


ENTRY_FRAMES = frozenset(
    {
        "_run_module_as_main",
        "_run_code",
        "<module>",
        "main",
        "run_api",
        "run_worker_process",
        "Server.run",
        "asyncio_run",
        "Runner.run",
        "Thread._bootstrap",
        "Thread._bootstrap_inner",
    }
)


def summarize_profile(path: Path, *, top: int = 12) -> dict[str, Any]:
    """From py-spy's collapsed stacks (GIL-holding samples only): own time by library
    (where the CPU goes), own time by function, and our own functions by inclusive time
    (which of our calls cost), each as a share of all samples."""
    own: dict[str, int] = {}
    by_package: dict[str, int] = {}
    ours: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError), path.open() as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_short_frame(fr) for fr in stack.split(";")]
            leaf = frames[-1]
            own[leaf] = own.get(leaf, 0) + count
            package = _package(leaf)
            by_package[package] = by_package.get(package, 0) + count
            for frame in set(frames):
                if "(smartgen/" in frame and frame.split(" (")[0] not in ENTRY_FRAMES:
                    ours[frame] = ours.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        rows = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(k, round(100 * v / total, 1)) for k, v in rows] if total else []

    return {
        "samples": total,
        "by_library": ranked(by_package),
        "own": ranked(own),
        "smartgen_inclusive": ranked(ours),
    }


def _package(frame: str) -> str:
    name, _, where = frame.partition(" (")
    if name == "Runner.run":
        return "event loop (uvloop, C)"
    where = where.rstrip(")")
    if where.startswith("stdlib/"):
        return "stdlib " + where.split("/")[1].removesuffix(".py")
    return where.split("/")[0].removesuffix(".py") or name


def _short_frame(frame: str) -> str:
    # "process (site-packages/bullmq/worker.py)" → "process (bullmq/worker.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "src/", "lib/python3."):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "lib/python3.":
                where = "stdlib/" + where.split("/", 1)[-1]
            break
    return f"{name} ({where})" if where else name
