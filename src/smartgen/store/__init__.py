"""Store selection: configuration decides which implementation of `Store` is used."""

from __future__ import annotations

from smartgen.config import Settings
from smartgen.store.base import Store


def open_store(settings: Settings) -> Store:
    """Build the configured store. Call inside the running event loop, then `await init()`."""
    from smartgen.store.mongo import MongoStore

    return MongoStore(settings.require_mongo_uri(), settings.mongo_database)
