"""Where the client keeps its tokens: one file per user, keyed by server URL."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
from pathlib import Path
from typing import Any

from smartgen.terminal.errors import ClientError

LOCAL_DOMAIN = "localhost.smartgen"


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "smartgen" / "credentials.json"


class CredentialStore:
    """`{server_url: {email, token, password?, local?}}` in a file only its owner can read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read {self.path} ({exc}): fix or delete it") from None
        if not isinstance(data, dict):
            raise ClientError(f"{self.path} is not a JSON object: fix or delete it")
        return data

    def get(self, url: str) -> dict[str, Any]:
        entry = self._load().get(url)
        return dict(entry) if isinstance(entry, dict) else {}

    def put(self, url: str, entry: dict[str, Any]) -> None:
        data = self._load()
        data[url] = entry
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
            os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to an existing file
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ClientError(f"cannot write {self.path}: {exc}") from None


def _local_email(suffix: str = "") -> str:
    try:
        name = getpass.getuser()
    except Exception:  # no login name in the environment or the password database
        name = ""
    name = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip(".-") or "user"
    return f"{name}{suffix}@{LOCAL_DOMAIN}"
