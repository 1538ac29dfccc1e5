"""Store selection: configuration decides which implementation of `Store` is used.

`MONGO_URI` → MongoDB; else `DATABASE_URL` → PostgreSQL (asyncpg, `postgres.py`) or SQLite
(sqlite3, `sqlite.py`); else the embedded default, a SQLite file in the data directory. Both
SQL stores create their schema through SQLAlchemy (`sql.py`, which is also a complete store
for either database). Each implementation is imported only in its branch, so a MongoDB
deployment never imports SQLAlchemy (nor a SQL one PyMongo's store).
"""

from __future__ import annotations

import os

from smartgen.config import Settings
from smartgen.store.base import Store

SQLITE_FILE = "smartgen.db"


def _sqlite_default(settings: Settings) -> str:
    data_dir = getattr(settings, "data_dir", None) or ".smartgen"
    return os.path.join(os.path.expanduser(data_dir), SQLITE_FILE)


def open_store(settings: Settings) -> Store:
    """Build the configured store. Call inside the running event loop, then `await init()`."""
    if settings.mongo_uri:
        from smartgen.store.mongo import MongoStore

        return MongoStore(settings.mongo_uri, settings.mongo_database)

    from sqlalchemy.engine import URL

    from smartgen.store.sql import sql_url

    pool_size = getattr(settings, "db_pool_size", 15)
    database_url = getattr(settings, "database_url", None)
    if database_url:
        url = sql_url(database_url)
        if url.get_backend_name() == "postgresql":
            from smartgen.store.postgres import PostgresStore

            return PostgresStore(url, pool_size=pool_size)
    else:
        # Absolute, so that the API and the worker agree even if one changes directory.
        url = URL.create("sqlite+aiosqlite", database=os.path.abspath(_sqlite_default(settings)))
    from smartgen.store.sqlite import SqliteStore

    return SqliteStore(url, pool_size=pool_size)


def _mongo_hosts(uri: str) -> str:
    """`host:port[,host:port…]` from a MongoDB URI, without credentials or options."""
    rest = uri.split("://", 1)[-1]
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    hosts = netloc.rsplit("@", 1)[-1]
    if uri.startswith("mongodb+srv://"):
        return f"srv:{hosts}"
    return ",".join(h if ":" in h else f"{h}:27017" for h in hosts.split(","))


def describe_store(settings: Settings) -> str:
    """Name the configured store for a banner, without credentials."""
    if settings.mongo_uri:
        return f"mongodb ({_mongo_hosts(settings.mongo_uri)}/{settings.mongo_database})"
    database_url = getattr(settings, "database_url", None)
    if database_url:
        from smartgen.store.sql import describe_url, sql_url

        return describe_url(sql_url(database_url))
    path = _sqlite_default(settings)
    if not os.path.isabs(path) and not path.startswith(("./", "../")):
        path = "./" + path
    return f"sqlite ({path}, embedded)"
