"""Details of the SQL stores that mutation testing (bench/mutation.py) found unchecked:
`restore` puts back every field of a snapshot (on every store), the messages a user or an
operator reads, DATABASE_URL's corner cases, a closed or broken SQLite store."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

import pytest

from smartgen.config import ConfigError
from smartgen.errors import Conflict, StoreUnavailable
from smartgen.models import JobStatus
from smartgen.store.base import Store
from smartgen.store.sql.postgres import PostgresStore
from smartgen.store.sql.sqlite import SqliteStore
from smartgen.store.sql.url import parse_database_url
from tests.test_store_contract import (  # noqa: F401 - the contract's fixtures
    T0,
    backend,
    backend_spec,
    make_job,
    make_user,
    oid,
)
from tests.test_store_contract import store as store

EVERY_STORE = pytest.mark.parametrize(
    "backend_spec", ["mongodb", "postgresql", "sqlite"], indirect=True
)


@EVERY_STORE
async def test_restore_puts_back_every_field_of_the_snapshot(store: Store) -> None:
    """The undo of a retry the queue refused: the failed job comes back exactly."""
    user = oid()
    at = T0 + timedelta(seconds=30)
    snapshot = make_job(
        user,
        status=JobStatus.failed,
        started_at=T0 + timedelta(seconds=61),
        completed_at=T0 + timedelta(seconds=62),
        failed_at=T0 + timedelta(seconds=63),
        cancelled_at=T0 + timedelta(seconds=64),
        generated_content="# Kept",
        error="Generation failed: the model provider answered HTTP 500",
        model="fake/model-1",
        usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        attempts=3,
        history=[{"status": "failed", "attempts": 3, "error": "earlier"}],
        updated_at=at,
    )
    # Requeued: queued again, the run's fields cleared (its attempts stay as they were).
    queued = make_job(user, job_id=snapshot.job_id, attempts=3)
    await store.jobs.create(queued)
    assert await store.jobs.restore(snapshot)
    assert await store.jobs.get(snapshot.job_id) == snapshot


@EVERY_STORE
async def test_a_taken_email_says_so(store: Store) -> None:
    user = make_user()
    await store.users.create(user)
    with pytest.raises(Conflict) as info:
        await store.users.create(make_user(email=user.email))
    assert info.value.message == "An account with this email already exists"


@pytest.mark.parametrize("backend_spec", ["sqlite", "postgresql"], indirect=True)
async def test_a_cap_of_one_holds_for_creates_batched_together(store: Store) -> None:
    """Creates made at once share one batch insert; each still sees the cap as if alone
    (SQLite: one writer at a time; PostgreSQL: the user's admission lock)."""
    user = oid()
    results = await asyncio.gather(
        *(store.jobs.create(make_job(user), max_unfinished=1) for _ in range(5))
    )
    assert sorted(results) == [False, False, False, False, True]
    assert await store.jobs.count_unfinished(user) == 1


# --- DATABASE_URL -----------------------------------------------------------------------------


def test_sqlite_url_drops_its_query_and_keeps_slashes_inside(tmp_path: Path) -> None:
    path = tmp_path / "a b" / "smart?gen.db"
    url = parse_database_url(f"sqlite:///{tmp_path}/a%20b/smart%3Fgen.db?mode=rwc")
    assert url.target == str(path)
    assert url.description == f"sqlite ({path}, embedded)"
    nested = parse_database_url("sqlite:///data://x/smartgen.db")  # "://" inside the path
    assert nested.target == os.path.abspath("data://x/smartgen.db")
    queried = parse_database_url(f"sqlite:///{tmp_path}/q.db?mode=rwc?x=1")  # the first "?"
    assert queried.target == str(tmp_path / "q.db")


@pytest.mark.parametrize(
    "raw",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",  # a host, no path: SQLite is a file on this machine
        "sqlite:///:memory:",
        "sqlite:///file:x.db?mode=memory",
    ],
)
def test_sqlite_needs_a_file_that_both_processes_share(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_database_url(raw)
    assert str(info.value) == (
        "DATABASE_URL: SQLite needs a file path (sqlite:///path/to/smartgen.db); the "
        "API and the worker are separate processes and must share it"
    )


def test_postgres_url_corner_cases() -> None:
    bare = parse_database_url("postgresql:///smartgen")
    assert bare.description == "postgresql (localhost:5432/smartgen)"
    nested = parse_database_url("postgres://u@db:6000/app?options=-c%20x://y")
    assert nested.target == "postgresql://u@db:6000/app?options=-c%20x://y"
    assert nested.description == "postgresql (db:6000/app)"
    named = parse_database_url("postgresql://u@db/XXapp")  # only the leading "/" goes
    assert named.description == "postgresql (db:5432/XXapp)"
    with pytest.raises(ConfigError) as info:
        parse_database_url("postgresql://u@db:port/app")
    assert str(info.value).startswith("DATABASE_URL: the port is not a number: e.g. ")
    with pytest.raises(ConfigError) as info:
        parse_database_url("://nothing")
    assert str(info.value).startswith("DATABASE_URL is not a database URL: e.g. ")


def test_a_store_refuses_another_dialects_url() -> None:
    with pytest.raises(ValueError) as info:
        SqliteStore(parse_database_url("postgresql://u@db/app"))
    assert str(info.value) == "SqliteStore needs a sqlite URL, not postgresql"
    with pytest.raises(ValueError) as info:
        PostgresStore(parse_database_url("sqlite:///x.db"))
    assert str(info.value) == "PostgresStore needs a postgresql URL, not sqlite"
    sqlite = SqliteStore(parse_database_url("sqlite:////tmp/x/smartgen.db"))
    assert sqlite.description == "sqlite (/tmp/x/smartgen.db, embedded)"


# --- a closed or broken SQLite store ----------------------------------------------------------


async def test_a_closed_sqlite_store_is_unavailable(tmp_path: Path) -> None:
    sqlite = SqliteStore(parse_database_url(f"sqlite:///{tmp_path / 'smartgen.db'}"))
    await sqlite.init()
    await sqlite.ping()
    await sqlite.close()
    with pytest.raises(StoreUnavailable) as info:
        await sqlite.ping()
    assert info.value.message == "SQLite does not answer"
    with pytest.raises(StoreUnavailable):
        await sqlite.jobs.get("any")


async def test_a_file_that_is_not_a_database_is_named_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "smartgen.db"
    path.write_bytes(b"this is not an SQLite file" * 100)
    sqlite = SqliteStore(parse_database_url(f"sqlite:///{path}"))
    try:
        with pytest.raises(StoreUnavailable) as info:
            await sqlite.init()
    finally:
        await sqlite.close()
    assert info.value.message == (
        f"Cannot open the sqlite ({path}, embedded) database: DatabaseError: file is not a database"
    )
