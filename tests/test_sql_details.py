"""Details of the SQL stores that mutation testing (bench/mutation.py) found unchecked:
`restore` puts back every field of a snapshot (on every store), the messages a user or an
operator reads, DATABASE_URL's corner cases, a closed or broken SQLite store."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from smartgen.config import ConfigError
from smartgen.errors import Conflict, StoreUnavailable
from smartgen.models import Completion, JobStatus
from smartgen.store.base import Store
from smartgen.store.sql.postgres import PostgresStore
from smartgen.store.sql.sqlite import SqliteStore
from smartgen.store.sql.sqlite_pool import each_in_one_transaction, rowcount
from smartgen.store.sql.url import parse_database_url
from smartgen.store.unavailable import NoConnection
from tests.test_store_contract import (  # noqa: F401 - the contract's fixtures
    DATA,
    T0,
    Backend,
    _reset_postgres,
    backend_spec,
    make_batch,
    make_job,
    make_user,
    oid,
    raw_sql,
)
from tests.test_store_contract import backend as backend
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
    assert str(info.value.__cause__) == "the store is closed"
    with pytest.raises(StoreUnavailable):
        await sqlite.jobs.get("any")
    for _ in range(2):  # a write refused as closed gives its write turn back
        with pytest.raises(StoreUnavailable) as info:
            await sqlite.users.create(make_user())
        assert str(info.value.__cause__) == "the store is closed"


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


# --- schema upgrades --------------------------------------------------------------------------

SQL_STORES = pytest.mark.parametrize("backend_spec", ["postgresql", "sqlite"], indirect=True)


async def _schema(backend: Backend) -> dict[str, Any]:
    """What a database's schema is, as its catalogue says: each table's columns (declared
    type, NOT NULL, default, key), each index's table, columns and uniqueness, each
    trigger's text."""
    if backend.name == "postgresql":
        columns = await raw_sql(
            backend,
            "SELECT table_name, column_name, data_type, character_maximum_length, "
            "is_nullable, column_default, is_generated, generation_expression "
            "FROM information_schema.columns WHERE table_schema = 'public'",
        )
        indexes = await raw_sql(
            backend, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        )
        return {
            "columns": {(r[0], r[1]): r[2:] for r in columns},
            "indexes": dict(indexes),
        }
    tables = [
        r[0] for r in await raw_sql(backend, "SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    described: dict[str, Any] = {"tables": sorted(tables), "columns": {}, "indexes": {}}
    for table in tables:
        for _, name, type_, notnull, default, pk in await raw_sql(
            backend, f"PRAGMA table_info('{table}')"
        ):
            described["columns"][(table, name)] = (type_, notnull, default, pk)
        for _, index, unique, origin, _partial in await raw_sql(
            backend, f"PRAGMA index_list('{table}')"
        ):
            cols = [r[2] for r in await raw_sql(backend, f"PRAGMA index_info('{index}')")]
            described["indexes"][index] = (table, cols, unique, origin)
    triggers = await raw_sql(backend, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
    described["triggers"] = dict(triggers)
    return described


async def _wipe(backend: Backend) -> None:
    for opened in backend.opened:
        await opened.close()
    backend.opened.clear()
    if backend.name == "postgresql":
        await _reset_postgres(backend.url)
        return
    path = backend.url.removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)


@SQL_STORES
async def test_a_database_upgraded_from_version_1_has_a_new_databases_schema(
    backend: Backend,
) -> None:
    """Every upgrade step (`schema.UPGRADES`) together gives what a new database gets
    from the CREATE statements: the same columns with the same types, NOT NULL and
    defaults, the same indexes and the same search triggers. A step left out, or a
    column added with another type or default, differs here."""
    await backend.open().init()
    fresh = await _schema(backend)
    await _wipe(backend)
    if backend.name == "sqlite":
        Path(backend.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    ddl = (DATA / f"schema_v1_sqlalchemy_{backend.name}.sql").read_text()
    for text in filter(str.strip, ddl.split(";")):
        await raw_sql(backend, text)
    await backend.open().init()
    upgraded = await _schema(backend)
    assert upgraded["columns"] == fresh["columns"]
    assert upgraded == fresh


@EVERY_STORE
async def test_a_worker_name_with_a_backslash_releases_only_its_own_leases(store: Store) -> None:
    """A worker's name is matched literally, backslash and LIKE's `%` and `_` included
    (`like_escape`): a name one character off, or one that `%` would stretch to, keeps
    its leases."""
    user = oid()
    now = T0 + timedelta(hours=2)
    lease = now + timedelta(minutes=5)
    worker = "w\\_1%.x"
    owners = {
        "own": f"a@{worker}",
        "one character off": "b@w\\X1%.x",
        "stretched": "c@w\\_1ZZ.x",
        "no backslash": "d@w_1%.x",
    }
    jobs = {}
    for name, owner in owners.items():
        job = make_job(user)
        await store.jobs.create(job)
        taken = await store.jobs.mark_processing(
            job.job_id, at=now, attempt=1, lease_until=lease, owner=owner
        )
        assert taken is not None
        jobs[name] = job.job_id
    released = await store.jobs.release_leases_of(worker, limit=100)
    assert [j.job_id for j in released] == [jobs["own"]]
    for name, job_id in jobs.items():
        stored = await store.jobs.get(job_id)
        assert stored is not None
        assert stored.lease_until == (None if name == "own" else lease), name


@EVERY_STORE
async def test_a_waiting_batch_job_changed_keeps_waiting_its_turn(store: Store) -> None:
    """PATCH on a batch's job that waits its turn changes it and leaves it waiting (only
    "run now" lets it out of turn, `release=True`)."""
    owner = oid()
    batch, jobs = make_batch(owner, 2)
    await store.batches.create(batch, jobs)
    later = T0 + timedelta(hours=1)
    changed = await store.jobs.reschedule(
        jobs[0].job_id, owner, scheduled_for=later, at=T0, prompt="Another prompt"
    )
    assert changed is not None
    assert (changed.batch_held, changed.scheduled_for, changed.prompt) == (
        True,
        later,
        "Another prompt",
    )
    assert await store.jobs.count_unfinished(owner) == 0  # still not counted: waiting


# --- the SQLite pool's limits -----------------------------------------------------------------


class Holds:
    """Pool-thread work that holds its connection until `free()`: how many hold one now."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.lock = threading.Lock()
        self.holding = 0

    def work(self, conn: sqlite3.Connection) -> int:
        with self.lock:
            self.holding += 1
        self.go.wait(60)  # bounded: a broken test ends
        return int(conn.execute("SELECT 1").fetchone()[0])

    async def until_holding(self, n: int) -> None:
        for _ in range(3000):  # bounded: 30 s
            if self.holding >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.holding} of {n} calls hold a connection")

    def free(self) -> None:
        self.go.set()


async def test_the_sqlite_pool_lends_at_most_its_size_then_says_so(tmp_path: Path) -> None:
    """DB_POOL_SIZE connections at once: with all of them busy, the next call waits the
    pool's timeout and is refused as "unavailable" (a 503), and once they come back it
    runs. Writes take one turn at a time: a second write waits for the first even with
    connections free, while reads run beside it."""
    sqlite = SqliteStore(
        parse_database_url(f"sqlite:///{tmp_path / 'smartgen.db'}"), pool_size=2, timeout=0.5
    )
    await sqlite.init()
    holds, writing = Holds(), Holds()
    try:
        busy = [asyncio.create_task(sqlite._pool.run(holds.work, writes=False)) for _ in range(2)]
        await holds.until_holding(2)
        with pytest.raises(StoreUnavailable) as info:  # not TimeoutError: it gave up itself
            await asyncio.wait_for(sqlite.users.get("nobody"), 30)
        assert isinstance(info.value.__cause__, NoConnection)
        assert str(info.value.__cause__) == "no database connection came free in time"
        holds.free()
        assert await asyncio.gather(*busy) == [1, 1]
        assert await sqlite.users.get("nobody") is None

        first = asyncio.create_task(sqlite._pool.run(writing.work, writes=True))
        await writing.until_holding(1)
        with pytest.raises(StoreUnavailable) as info:
            await asyncio.wait_for(sqlite.users.create(make_user()), 30)
        assert str(info.value.__cause__) == "the write turn did not come in time"
        assert await sqlite.users.get("nobody") is None  # a read runs beside the write
        writing.free()
        assert await first == 1
        user = make_user()
        await sqlite.users.create(user)
        assert await sqlite.users.get(user.user_id) == user
        assert len(sqlite._pool._idle) == 2  # every connection came back
    finally:
        holds.free()
        writing.free()
        await sqlite.close()


def test_a_batched_transaction_that_fails_as_a_whole_is_undone_and_says_why(
    tmp_path: Path,
) -> None:
    """`each_in_one_transaction`: a statement's own error (a constraint) undoes that
    statement alone; an operational error (locked, I/O, a missing table) undoes the whole
    transaction, is raised as it is (the store answers 503 for it), and leaves the
    connection out of any transaction, ready for the next call."""
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        work = each_in_one_transaction(
            [("INSERT INTO t VALUES (1)", ()), ("INSERT INTO t VALUES (1)", ())], rowcount
        )
        first, second = work(conn)
        assert first == 1 and isinstance(second, sqlite3.IntegrityError)
        broken = each_in_one_transaction(
            [("INSERT INTO t VALUES (2)", ()), ("INSERT INTO missing VALUES (3)", ())], rowcount
        )
        with pytest.raises(sqlite3.OperationalError) as info:
            broken(conn)
        assert str(info.value) == "no such table: missing"
        assert not conn.in_transaction
        assert conn.execute("SELECT k FROM t").fetchall() == [(1,)]
    finally:
        conn.close()


@pytest.mark.parametrize("backend_spec", ["sqlite", "postgresql"], indirect=True)
async def test_sql_batches_of_two_takes_and_completions(store: Store) -> None:
    """Three creates, takes or completions at once: one goes alone (the one flush slot),
    the other two share a batch, the smallest batch that runs in one transaction. Each
    gets its own outcome."""
    jobs = [make_job(oid()) for _ in range(3)]
    created = await asyncio.gather(*(store.jobs.create(job, max_unfinished=1) for job in jobs))
    assert created == [True] * 3
    inserts = store.jobs.inserts  # type: ignore[attr-defined]
    assert (inserts.items, inserts.flushes) == (3, 2)
    now = T0 + timedelta(minutes=2)
    taken = await asyncio.gather(
        *(store.jobs.mark_processing(j.job_id, at=now, attempt=1, owner="m") for j in jobs)
    )
    assert [t.job_id if t else None for t in taken] == [j.job_id for j in jobs]
    takes = store.jobs.takes  # type: ignore[attr-defined]
    assert (takes.items, takes.flushes) == (3, 2)
    written = await asyncio.gather(
        *(
            store.jobs.mark_completed(j.job_id, result=Completion(j.job_id, "m"), at=now)
            for j in jobs
        )
    )
    assert written == [True] * 3
    completions = store.jobs.completions  # type: ignore[attr-defined]
    assert (completions.items, completions.flushes) == (3, 2)
    for job in jobs:
        done = await store.jobs.get(job.job_id)
        assert done is not None and done.generated_content == job.job_id


async def test_start_up_waits_for_another_processs_write_to_switch_to_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file not yet in WAL mode with another connection's write in progress: switching
    it to WAL answers "database is locked" at once (SQLite does not wait in its busy
    handler there), so `init` retries until the write ends instead of failing."""
    path = tmp_path / "smartgen.db"
    writer = sqlite3.connect(path, isolation_level=None)
    retries: list[float] = []
    real_sleep = time.sleep

    def counted_sleep(seconds: float) -> None:
        retries.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", counted_sleep)
    sqlite = SqliteStore(parse_database_url(f"sqlite:///{path}"))
    try:
        writer.execute("CREATE TABLE other (a)")
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO other VALUES (1)")
        starting = asyncio.create_task(sqlite.init())
        for _ in range(3000):  # bounded: 30 s
            if retries or starting.done():
                break
            await asyncio.sleep(0.01)
        writer.execute("COMMIT")
        await starting  # no StoreUnavailable: it waited
        assert retries and not starting.exception()
        mode = await sqlite._pool.run(
            lambda c: c.execute("PRAGMA journal_mode").fetchone()[0], writes=False
        )
        assert mode == "wal"
    finally:
        writer.close()
        await sqlite.close()


@pytest.mark.parametrize("backend_spec", ["sqlite"], indirect=True)
async def test_sqlite_writes_every_time_with_six_fraction_digits(backend: Backend) -> None:
    """Times are text compared as text: a whole second is written `…:05.000000`, as
    smartgen 0.1 (SQLAlchemy) wrote it, never `…:05`, which sorts before it. So a job
    that changed at exactly `since` is not "changed since" it."""
    store = backend.open()
    await store.init()
    user = oid()
    whole = T0.replace(microsecond=0)
    job = make_job(user, at=whole)
    await store.jobs.create(job)
    rows = await raw_sql(backend, f"SELECT created_at FROM jobs WHERE job_id = '{job.job_id}'")
    assert rows == [("2030-01-02 03:04:05.000000",)]
    # A row as smartgen 0.1 wrote it, compared with a time written now.
    await raw_sql(
        backend,
        f"UPDATE jobs SET updated_at = '2030-01-02 03:04:05.000000' WHERE job_id = '{job.job_id}'",
    )
    assert await store.jobs.list_changed_since(user, whole, limit=10) == []


async def test_a_sqlite_data_directory_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the data directory should be")
    sqlite = SqliteStore(parse_database_url(f"sqlite:///{blocker / 'data' / 'smartgen.db'}"))
    try:
        with pytest.raises(StoreUnavailable) as info:
            await sqlite.init()
    finally:
        await sqlite.close()
    assert info.value.message == (
        f"Cannot create the directory '{blocker / 'data'}' for the SQLite database: Not a directory"
    )


async def test_the_sqlite_pool_keeps_a_connection_a_statement_error_left_usable(
    tmp_path: Path,
) -> None:
    """A refused statement (a constraint) leaves its connection in the pool, reused by
    the next call; an operational error (here: a missing table) closes it, and the next
    call opens another."""
    sqlite = SqliteStore(parse_database_url(f"sqlite:///{tmp_path / 'smartgen.db'}"), pool_size=1)
    await sqlite.init()
    try:
        user = make_user()
        await sqlite.users.create(user)
        (kept,) = sqlite._pool._idle
        with pytest.raises(Conflict):
            await sqlite.users.create(make_user(email=user.email))
        assert sqlite._pool._idle == [kept]
        with pytest.raises(sqlite3.OperationalError):
            await sqlite._pool.run(lambda c: c.execute("SELECT * FROM missing"), writes=False)
        assert sqlite._pool._idle == []
        with pytest.raises(sqlite3.ProgrammingError):  # closed
            kept.execute("SELECT 1")
        assert await sqlite.users.get(user.user_id) == user
        assert len(sqlite._pool._idle) == 1 and sqlite._pool._idle[0] is not kept
    finally:
        await sqlite.close()


async def test_closing_the_sqlite_store_waits_for_a_statement_in_progress(
    tmp_path: Path,
) -> None:
    sqlite = SqliteStore(parse_database_url(f"sqlite:///{tmp_path / 'smartgen.db'}"))
    await sqlite.init()
    holds = Holds()
    ended: list[str] = []

    def work(conn: sqlite3.Connection) -> int:
        value = holds.work(conn)
        time.sleep(0.3)  # still running when close() begins
        ended.append("work")
        return value

    running = asyncio.create_task(sqlite._pool.run(work, writes=True))
    await holds.until_holding(1)
    holds.free()
    await sqlite.close()
    assert ended == ["work"]
    assert await running == 1
