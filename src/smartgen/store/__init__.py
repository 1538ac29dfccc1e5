"""Store selection: configuration decides which implementation of `Store` is used.

`MONGO_URI` → MongoDB (`mongo.py`); else `DATABASE_URL` → PostgreSQL (asyncpg) or SQLite
(sqlite3), both in `sql/`; else the embedded default, a SQLite file in the data directory.
Each implementation is imported only in its branch, so a MongoDB deployment never imports
a SQL driver (nor a SQL one PyMongo's store).
"""

from __future__ import annotations

import os

from smartgen.config import Settings
from smartgen.store.base import Store
from smartgen.store.sql.url import SqlUrl, parse_database_url

SQLITE_FILE = "smartgen.db"


def sql_url(settings: Settings) -> SqlUrl:
    """DATABASE_URL, or the embedded SQLite file in DATA_DIR."""
    if settings.database_url:
        return parse_database_url(settings.database_url)
    return SqlUrl.sqlite_file(os.path.join(settings.data_dir, SQLITE_FILE))


def open_store(settings: Settings) -> Store:
    """Build the configured store. Call inside the running event loop, then `await init()`."""
    if settings.mongo_uri:
        from smartgen.store.mongo import MongoStore

        return MongoStore(
            settings.mongo_uri, settings.mongo_database, lean_io=settings.mongo_lean_io
        )
    url = sql_url(settings)
    size, fair = settings.db_pool_size, settings.db_fair_pool
    if url.backend == "postgresql":
        from smartgen.store.sql.postgres import PostgresStore

        return PostgresStore(url, pool_size=size, fair_pool=fair)
    from smartgen.store.sql.sqlite import SqliteStore

    return SqliteStore(url, pool_size=size, fair_pool=fair)


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
    if settings.database_url:
        return parse_database_url(settings.database_url).description
    path = os.path.join(settings.data_dir, SQLITE_FILE)
    if not os.path.isabs(path) and not path.startswith(("./", "../")):
        path = "./" + path
    return f"sqlite ({path}, embedded)"
