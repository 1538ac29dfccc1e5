"""`smartgen api | worker | dev`: the processes of the system."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from smartgen import __version__
from smartgen.config import ConfigError, Settings, load_settings
from smartgen.errors import StoreUnavailable
from smartgen.terminal import add_client_commands, run_client_command


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Third-party chatter stays at warning level unless asked for debug.
    if level.lower() != "debug":
        for name in ("httpx", "httpcore", "pymongo", "socketio.server", "engineio.server"):
            logging.getLogger(name).setLevel(logging.WARNING)


def preflight_store(settings: Settings) -> None:
    """Open the store and bring its schema/indexes up to date before serving, so an
    unreachable database is one clear line and exit code 3, not a traceback."""
    from smartgen.store import open_store

    async def check() -> None:
        store = open_store(settings)
        try:
            await store.init()
        finally:
            await store.close()

    asyncio.run(check())


def run_api(settings: Settings) -> int:
    import uvicorn

    from smartgen.app import create_app
    from smartgen.sticky import GracefulServer, StickyWorker, run_worker_api, serve_workers

    worker = StickyWorker.from_env()
    if worker is not None:  # one process of a multi-process API, started by the dispatcher
        return run_worker_api(settings, worker)
    if settings.api_workers > 1:
        # Settings checked first (create_app), then the schema once, then the workers.
        create_app(settings, init_store=False)
        preflight_store(settings)
        return serve_workers(settings, settings.api_workers)

    # Settings checked first (create_app), then the schema once; the heap settles after start-up.
    app = create_app(settings, init_store=False, settle_heap=True)
    preflight_store(settings)  # the schema and indexes, once, before serving
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=settings.log_level.lower(),
        access_log=settings.log_level.lower() == "debug",
        timeout_graceful_shutdown=10,
        proxy_headers=True,
    )
    server = GracefulServer(config)
    logging.getLogger("smartgen").info(
        "API on http://%s:%d (docs at /docs), Socket.IO at /socket.io/",
        settings.host,
        settings.port,
    )
    server.run()
    return 0 if server.started else 1


def run_worker_process(settings: Settings) -> int:
    from smartgen.worker import run_worker

    settings.require_llm_credentials()
    preflight_store(settings)
    try:
        import uvloop

        uvloop.run(run_worker(settings, init_store=False, settle_heap=True))
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(run_worker(settings, init_store=False, settle_heap=True))
    return 0


def describe_llm(settings: Settings) -> str:
    if settings.use_offline_llm:
        return "offline drafts (no OPENROUTER_KEY; set it for AI-written content)"
    where = "local server" if settings.llm_is_local else "external"
    return f"{settings.openrouter_model} at {settings.base_url} ({where})"


def banner(settings: Settings, *, store: str, redis: str, llm: str, secret: str) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}"
    delay = settings.generation_delay_seconds
    lines = [
        "",
        f"  smartgen {__version__} is starting",
        f"  API        {url}   (docs: {url}/docs, Socket.IO: {url}/socket.io/)",
        f"  Store      {store}",
        f"  Redis      {redis}",
        f"  LLM        {llm}",
        f"  Delay      {delay:g} s before each job runs (GENERATION_DELAY_SECONDS)",
        f"  JWT secret {secret}",
        "  Get a token:",
        f"    curl -s -X POST {url}/auth/register -H 'Content-Type: application/json' \\",
        """      -d '{"email": "you@example.com", "password": "a long password"}'""",
        '  Or try the terminal client:  smartgen generate "How to bake sourdough bread"',
        "  Stop with Ctrl-C.",
        "",
    ]
    return "\n".join(lines)


def run_dev(settings: Settings) -> int:
    """API and worker as two child processes (the original's `npm run dev:all`), on
    embedded defaults for whatever is not configured."""
    from smartgen.embedded import dev_jwt_secret, ensure_redis
    from smartgen.store import describe_store

    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    secret, secret_note = dev_jwt_secret(settings, data_dir)
    env = {**os.environ, "JWT_SECRET": secret}
    redis = ensure_redis(settings, data_dir)
    env["REDIS_URL"] = redis.url
    settings = settings.model_copy(update={"jwt_secret": secret})
    settings.require_jwt_secret()
    settings.require_llm_credentials()
    print(
        banner(
            settings,
            store=describe_store(settings),
            redis=redis.description,
            llm=describe_llm(settings),
            secret=secret_note,
        ),
        file=sys.stderr,
        flush=True,
    )
    try:
        return _supervise(settings, env)
    finally:
        redis.stop()


def _supervise(settings: Settings, env: dict[str, str]) -> int:
    children = {
        name: subprocess.Popen([sys.executable, "-m", "smartgen", name], env=env)
        for name in ("api", "worker")
    }
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    while not stopping and all(p.poll() is None for p in children.values()):
        time.sleep(0.2)
    for name, proc in children.items():
        if proc.poll() is not None and not stopping:
            print(f"smartgen: {name} exited with code {proc.returncode}", file=sys.stderr)
            status = proc.returncode or 1
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_grace_seconds + 15
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartgen", description="Queued AI content generation: API, worker and tools."
    )
    parser.add_argument("--version", action="version", version=f"smartgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("api", help="run the HTTP + Socket.IO API (PORT, default 5000)")
    sub.add_parser("worker", help="run the background worker")
    sub.add_parser("dev", help="run the API and the worker together")
    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "client_command", None):
        return run_client_command(args)  # a client of a running server: no server settings
    try:
        settings = load_settings()
        _setup_logging(settings.log_level)
        if args.command == "api":
            return run_api(settings)
        if args.command == "worker":
            return run_worker_process(settings)
        if args.command == "dev":
            return run_dev(settings)
    except ConfigError as exc:
        print(f"smartgen: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"smartgen: {exc.message}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
