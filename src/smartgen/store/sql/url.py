"""DATABASE_URL for the SQL stores: which database, where, and how to name it in a banner."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit

from smartgen.config import ConfigError

_EXAMPLES = "e.g. postgresql://user@host:5432/smartgen or sqlite:///./.smartgen/smartgen.db"
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")
_SQLITE_SCHEMES = ("sqlite", "sqlite+aiosqlite")


@dataclass(frozen=True, slots=True)
class SqlUrl:
    """A parsed DATABASE_URL. `target` is asyncpg's DSN (libpq spelling) for PostgreSQL and
    the absolute file path for SQLite."""

    backend: Literal["postgresql", "sqlite"]
    target: str
    description: str  # no credentials

    @classmethod
    def sqlite_file(cls, path: str) -> SqlUrl:
        # Absolute, so that the API and the worker agree even if one changes directory.
        path = os.path.abspath(os.path.expanduser(path))
        return cls("sqlite", path, f"sqlite ({path}, embedded)")


def parse_database_url(raw: str) -> SqlUrl:
    """`ConfigError` naming DATABASE_URL for anything but a PostgreSQL or SQLite file URL.

    Accepted: postgresql://, postgres://, postgresql+asyncpg:// and sqlite:///path,
    sqlite+aiosqlite:///path (the spellings SQLAlchemy-style configuration uses)."""
    text = raw.strip()
    scheme, separator, _ = text.partition("://")
    if not separator or not scheme:
        raise ConfigError(f"DATABASE_URL is not a database URL: {_EXAMPLES}")
    scheme = scheme.lower()
    if scheme in _POSTGRES_SCHEMES:
        return _postgres(urlsplit("postgresql://" + text.split("://", 1)[1]))
    if scheme in _SQLITE_SCHEMES:
        # sqlite:///relative/path, sqlite:////absolute/path (SQLAlchemy's convention)
        rest = text.split("://", 1)[1]
        path = rest[1:] if rest.startswith("/") else ""
        path = path.split("?", 1)[0]
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ConfigError(
                "DATABASE_URL: SQLite needs a file path (sqlite:///path/to/smartgen.db); the "
                "API and the worker are separate processes and must share it"
            )
        return SqlUrl.sqlite_file(unquote(path))
    raise ConfigError(
        f"DATABASE_URL: unsupported database {scheme!r}; use postgresql://… or sqlite:///…"
    )


def _postgres(parts: SplitResult) -> SqlUrl:
    try:
        port = parts.port or 5432
    except ValueError:
        raise ConfigError(f"DATABASE_URL: the port is not a number: {_EXAMPLES}") from None
    host = parts.hostname or "localhost"
    database = unquote(parts.path.lstrip("/"))
    return SqlUrl("postgresql", parts.geturl(), f"postgresql ({host}:{port}/{database})")
