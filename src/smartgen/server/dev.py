"""`smartgen dev`: the API and the worker as two child processes (the original's
`npm run dev:all`), on embedded defaults for whatever is not configured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from smartgen import __version__
from smartgen.config import Settings
from smartgen.server.embedded import dev_jwt_secret, ensure_redis
from smartgen.server.supervise import stop_children
from smartgen.store import describe_store


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
        f"  Console    {url}/   (in a browser: sign up, generate, watch it stream)",
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
    """API and worker as two child processes, on embedded defaults for whatever is not
    configured."""
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
    stop_children(children.values(), settings.shutdown_grace_seconds + 15)
    return status
