"""The repository contract (store/base.py), one suite run against every store: MongoDB (the
wire-protocol test server), PostgreSQL (a real server on 127.0.0.1:5432, in a database this
session creates and drops) and SQLite (a file under tmp_path), the SQL stores each on their
fair pool (the default) and on the libraries' own (`-stockpool`, DB_FAIR_POOL=false)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from smartgen.config import ConfigError
from smartgen.errors import Conflict, StoreUnavailable
from smartgen.kit.times import utcnow
from smartgen.models import (
    ApiKey,
    Batch,
    Completion,
    Content,
    Job,
    JobStatus,
    User,
    Voice,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    job_from_wire,
    job_to_wire,
)
from smartgen.store import describe_store, open_store
from smartgen.store.base import Store
from tests.conftest import free_port

# "-stockpool": the same store on the libraries' own pools (DB_FAIR_POOL=false).
BACKENDS = ["mongodb", "postgresql", "postgresql-stockpool", "sqlite", "sqlite-stockpool"]
DATA = Path(__file__).parent / "data"
T0 = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


async def _reset_postgres(url: str) -> None:
    """A fresh, empty schema for each test (cheaper than a database per test)."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


@dataclass
class Backend:
    """Opens stores on this test's own, initially empty database; closes them all after."""

    name: str
    make: Callable[[], Store]
    unreachable: Callable[[], Store]
    url: str = ""
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        store = self.make()
        self.opened.append(store)
        return store

    def open_unreachable(self) -> Store:
        store = self.unreachable()
        self.opened.append(store)
        return store


@pytest.fixture(params=BACKENDS)
def backend_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    from smartgen.store.mongo import MongoStore
    from smartgen.store.sql.postgres import PostgresStore
    from smartgen.store.sql.sqlite import SqliteStore
    from smartgen.store.sql.url import parse_database_url as parse

    if request.param == "mongodb":
        uri = request.getfixturevalue("mongo_uri")
        database = f"c_{uuid.uuid4().hex[:10]}"
        return Backend(
            "mongodb",
            lambda: MongoStore(uri, database),
            lambda: MongoStore(f"mongodb://127.0.0.1:{free_port()}", "x", timeout_ms=300),
        )
    fair = not request.param.endswith("-stockpool")
    if request.param.startswith("postgresql"):
        url = request.getfixturevalue("pg_database")
        nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
        return Backend(
            "postgresql",
            lambda: PostgresStore(parse(url), fair_pool=fair),
            lambda: PostgresStore(parse(nowhere), timeout=2, fair_pool=fair),
            url=url,
        )
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the data directory should be")
    url = f"sqlite:///{tmp_path / 'data' / 'smartgen.db'}"
    return Backend(
        "sqlite",
        lambda: SqliteStore(parse(url), fair_pool=fair),
        lambda: SqliteStore(parse(f"sqlite:///{blocker / 'smartgen.db'}"), fair_pool=fair),
        url=url,
    )


@pytest.fixture
async def backend(backend_spec: Backend) -> AsyncIterator[Backend]:
    if backend_spec.name == "postgresql":
        await _reset_postgres(backend_spec.url)
    try:
        yield backend_spec
    finally:
        for store in backend_spec.opened:
            await store.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    store = backend.open()
    await store.init()
    return store


def oid() -> str:
    return str(ObjectId())


def make_user(**kw: Any) -> User:
    user_id = kw.pop("user_id", oid())
    fields: dict[str, Any] = {
        "user_id": user_id,
        "email": f"{user_id}@example.com",
        "password_hash": "$argon2id$v=19$stub",
        "created_at": utcnow(),
    }
    return User(**{**fields, **kw})


def make_job(user_id: str, **kw: Any) -> Job:
    at = kw.pop("at", T0)
    fields: dict[str, Any] = {
        "job_id": uuid.uuid4().hex,
        "user_id": user_id,
        "status": JobStatus.queued,
        "prompt": "How to bake a sourdough bread",
        "content_type": "Blog Post Outline",
        "scheduled_for": at + timedelta(seconds=60),
        "created_at": at,
        "updated_at": at,
    }
    return Job(**{**fields, **kw})


def make_content(user_id: str, job_id: str, **kw: Any) -> Content:
    fields: dict[str, Any] = {
        "content_id": uuid.uuid4().hex,
        "user_id": user_id,
        "job_id": job_id,
        "title": "Sourdough",
        "body": "# Sourdough\n\n1. Starter",
        "content_type": "Blog Post Outline",
        "created_at": T0,
        "prompt": "How to bake a sourdough bread",
        "model": "fake/model-1",
    }
    return Content(**{**fields, **kw})


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.utcoffset() == timedelta(0)
    assert value.microsecond % 1000 == 0


# --- lifecycle ----------------------------------------------------------------------------
async def test_init_is_idempotent_and_ping_answers(backend: Backend, store: Store) -> None:
    assert store.name == backend.name
    await store.init()
    other = backend.open()
    await other.init()
    await store.ping()
    await other.ping()
    user = make_user()
    await store.users.create(user)
    assert await other.users.get(user.user_id) == user


async def test_concurrent_init_on_an_empty_database(backend: Backend) -> None:
    # An API and a worker starting together on a fresh database.
    stores = [backend.open() for _ in range(3)]
    await asyncio.gather(*(s.init() for s in stores))
    user = make_user()
    await stores[0].users.create(user)
    assert await stores[2].users.get_by_email(user.email) == user


async def test_unreachable_database_raises_store_unavailable(backend: Backend) -> None:
    store = backend.open_unreachable()
    with pytest.raises(StoreUnavailable) as info:
        await asyncio.wait_for(store.init(), 20)
    assert info.value.status_code == 503
    assert info.value.message
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.ping(), 20)
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.users.get(oid()), 20)
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.jobs.list_for_user(oid(), limit=5), 20)


# --- users --------------------------------------------------------------------------------
async def test_users_create_and_get(store: Store) -> None:
    created = utcnow().replace(microsecond=123456)
    user = make_user(email="Ada@Example.com", created_at=created)
    await store.users.create(user)
    expected = make_user(
        user_id=user.user_id,
        email="Ada@Example.com",
        created_at=created.replace(microsecond=123000),
    )
    got = await store.users.get(user.user_id)
    assert got == expected
    assert got is not None
    assert_utc(got.created_at)
    assert await store.users.get_by_email("Ada@Example.com") == expected
    assert await store.users.get_by_email("nobody@example.com") is None


@pytest.mark.parametrize("user_id", ["not-an-id", "", "0" * 24, "zz" * 12])
async def test_unknown_or_malformed_user_ids_are_none(store: Store, user_id: str) -> None:
    await store.users.create(make_user())
    assert await store.users.get(user_id) is None


async def test_duplicate_email_is_a_conflict(store: Store) -> None:
    first = make_user(email="dup@example.com")
    await store.users.create(first)
    with pytest.raises(Conflict) as info:
        await store.users.create(make_user(email="dup@example.com"))
    assert info.value.code == "email_taken"
    assert info.value.status_code == 409
    assert await store.users.get_by_email("dup@example.com") == first
    # The store is still usable after the failed insert.
    second = make_user()
    await store.users.create(second)
    assert await store.users.get(second.user_id) == second


# --- jobs ---------------------------------------------------------------------------------
async def test_job_create_get_and_ownership(store: Store) -> None:
    owner, other = oid(), oid()
    job = make_job(owner)
    await store.jobs.create(job)
    got = await store.jobs.get(job.job_id)
    assert got == job
    assert got is not None
    assert got.status is JobStatus.queued
    assert got.attempts == 0
    assert (got.started_at, got.completed_at, got.failed_at) == (None, None, None)
    assert (got.generated_content, got.error, got.model, got.usage) == (None, None, None, None)
    for value in (got.created_at, got.updated_at, got.scheduled_for):
        assert_utc(value)
    assert await store.jobs.get_for_user(job.job_id, owner) == job
    assert await store.jobs.get_for_user(job.job_id, other) is None
    assert await store.jobs.get("no-such-job") is None
    assert await store.jobs.get_for_user("no-such-job", owner) is None


async def test_datetimes_come_back_utc_with_milliseconds(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2030, 6, 1, 14, 0, 0, 123456, tzinfo=plus2)
    job = make_job(oid(), at=local, scheduled_for=local + timedelta(minutes=1))
    await store.jobs.create(job)
    got = await store.jobs.get(job.job_id)
    assert got is not None
    want = datetime(2030, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert got.created_at == want
    assert got.updated_at == want
    assert got.scheduled_for == want + timedelta(minutes=1)
    assert got.created_at.tzinfo is not None
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.created_at.isoformat() == "2030-06-01T12:00:00.123000+00:00"


async def test_list_for_user_newest_first_with_limit_and_status(store: Store) -> None:
    user, other = oid(), oid()
    jobs = [make_job(user, at=T0 + timedelta(seconds=i)) for i in range(5)]
    # Two more with the same creation time: the later insert comes first.
    twins = [make_job(user, at=T0 + timedelta(seconds=10)) for _ in range(2)]
    for job in [*jobs, *twins]:
        await store.jobs.create(job)
    await store.jobs.create(make_job(other, at=T0 + timedelta(seconds=20)))

    listed = await store.jobs.list_for_user(user, limit=50)
    newest_first = [twins[1], twins[0], *reversed(jobs)]
    assert [j.job_id for j in listed] == [j.job_id for j in newest_first]
    assert listed[0] == twins[1]

    top3 = await store.jobs.list_for_user(user, limit=3)
    assert [j.job_id for j in top3] == [j.job_id for j in newest_first[:3]]

    assert await store.jobs.mark_processing(jobs[1].job_id, at=T0 + timedelta(minutes=1), attempt=1)
    assert await store.jobs.mark_failed(jobs[3].job_id, error="boom", at=T0 + timedelta(minutes=1))
    processing = await store.jobs.list_for_user(user, limit=50, status=JobStatus.processing)
    assert [j.job_id for j in processing] == [jobs[1].job_id]
    failed = await store.jobs.list_for_user(user, limit=50, status=JobStatus.failed)
    assert [(j.job_id, j.error) for j in failed] == [(jobs[3].job_id, "boom")]
    queued = await store.jobs.list_for_user(user, limit=2, status=JobStatus.queued)
    assert [j.job_id for j in queued] == [twins[1].job_id, twins[0].job_id]
    assert await store.jobs.list_for_user(user, limit=50, status=JobStatus.completed) == []
    assert await store.jobs.list_for_user(oid(), limit=50) == []


async def test_list_changed_since_oldest_change_first(store: Store) -> None:
    user, other = oid(), oid()
    a, b, c = (make_job(user) for _ in range(3))
    for job in (a, b, c):
        await store.jobs.create(job)
    await store.jobs.create(make_job(other, at=T0 + timedelta(hours=1)))
    assert await store.jobs.mark_processing(a.job_id, at=T0 + timedelta(seconds=1), attempt=1)
    assert await store.jobs.mark_processing(b.job_id, at=T0 + timedelta(seconds=3), attempt=1)
    assert await store.jobs.mark_failed(c.job_id, error="x", at=T0 + timedelta(seconds=2))

    changed = await store.jobs.list_changed_since(user, T0, limit=10)
    assert [j.job_id for j in changed] == [a.job_id, c.job_id, b.job_id]
    assert changed[1].status is JobStatus.failed
    # Strictly after `since`.
    later = await store.jobs.list_changed_since(user, T0 + timedelta(seconds=1), limit=10)
    assert [j.job_id for j in later] == [c.job_id, b.job_id]
    assert [j.job_id for j in await store.jobs.list_changed_since(user, T0, limit=1)] == [a.job_id]
    assert await store.jobs.list_changed_since(user, T0 + timedelta(seconds=3), limit=10) == []


async def test_list_unfinished_due(store: Store) -> None:
    user = oid()
    now = T0 + timedelta(hours=1)

    def due(minutes: int) -> Job:
        return make_job(user, scheduled_for=now + timedelta(minutes=minutes))

    queued_due, processing_due, completed_due, failed_due, queued_later = (
        due(-5),
        due(-4),
        due(-3),
        due(-2),
        due(+5),
    )
    for job in (queued_due, processing_due, completed_due, failed_due, queued_later):
        await store.jobs.create(job)
    for job in (processing_due, completed_due):
        assert await store.jobs.mark_processing(job.job_id, at=now, attempt=1)
    assert await store.jobs.mark_completed(
        completed_due.job_id, result=Completion("done", "m"), at=now
    )
    assert await store.jobs.mark_failed(failed_due.job_id, error="x", at=now)

    assert await store.jobs.count_unfinished(user) == 3  # queued, processing, queued later
    assert await store.jobs.count_unfinished(oid()) == 0
    found = await store.jobs.list_unfinished_due(now, limit=100)
    assert {j.job_id for j in found} == {queued_due.job_id, processing_due.job_id}
    assert {j.status for j in found} == {JobStatus.queued, JobStatus.processing}
    assert len(await store.jobs.list_unfinished_due(now, limit=1)) == 1
    everything = await store.jobs.list_unfinished_due(now + timedelta(hours=1), limit=100)
    assert {j.job_id for j in everything} == {
        queued_due.job_id,
        processing_due.job_id,
        queued_later.job_id,
    }
    assert await store.jobs.list_unfinished_due(now - timedelta(hours=1), limit=100) == []


async def test_list_past_lease(store: Store) -> None:
    """`smartgen status`'s stuck jobs: processing, and the lease ran out (or there is none)."""
    user = oid()
    now = T0 + timedelta(hours=1)
    jobs = [make_job(user, at=T0 + timedelta(seconds=i)) for i in range(6)]
    expired, leaseless, leased, _still_queued, completed, failed = jobs
    for job in jobs:
        await store.jobs.create(job)

    async def take(job: Job, started: datetime, lease: datetime | None) -> None:
        taken = await store.jobs.mark_processing(
            job.job_id, at=started, attempt=1, lease_until=lease, owner="m"
        )
        assert taken is not None

    await take(expired, now - timedelta(minutes=3), now - timedelta(seconds=1))
    await take(leaseless, now - timedelta(minutes=5), None)
    await take(leased, now - timedelta(minutes=9), now + timedelta(minutes=1))
    await take(completed, now - timedelta(minutes=9), now - timedelta(minutes=1))
    assert await store.jobs.mark_completed(completed.job_id, result=Completion("x", "m"), at=now)
    await take(failed, now - timedelta(minutes=9), now - timedelta(minutes=1))
    assert await store.jobs.mark_failed(failed.job_id, error="x", at=now)

    found = await store.jobs.list_past_lease(now, limit=10)
    assert [j.job_id for j in found] == [leaseless.job_id, expired.job_id]  # earliest start
    assert all(j.status == JobStatus.processing for j in found)
    assert found[1].lease_until == now - timedelta(seconds=1)
    assert [j.job_id for j in await store.jobs.list_past_lease(now, limit=1)] == [leaseless.job_id]
    # Two minutes earlier only the leaseless one had run out; later, the leased one too.
    early = await store.jobs.list_past_lease(now - timedelta(minutes=2), limit=10)
    assert [j.job_id for j in early] == [leaseless.job_id]
    late = await store.jobs.list_past_lease(now + timedelta(minutes=2), limit=10)
    assert [j.job_id for j in late] == [leased.job_id, leaseless.job_id, expired.job_id]
    assert await store.jobs.list_past_lease(now, limit=10) == found  # read-only


async def test_create_with_a_cap_on_unfinished_jobs(store: Store) -> None:
    user, other = oid(), oid()
    first, second, refused = (make_job(user, at=T0 + timedelta(seconds=i)) for i in range(3))
    assert await store.jobs.create(first, max_unfinished=2) is True
    assert await store.jobs.create(second, max_unfinished=2) is True
    # Cap reached: nothing inserted.
    assert await store.jobs.create(refused, max_unfinished=2) is False
    assert await store.jobs.get(refused.job_id) is None
    assert await store.jobs.count_unfinished(user) == 2
    listed = await store.jobs.list_for_user(user, limit=50)
    assert [j.job_id for j in listed] == [second.job_id, first.job_id]
    # A capped insert stores the same record as a plain one.
    assert await store.jobs.get(first.job_id) == first
    # A lower cap refuses too; another user is not affected.
    assert await store.jobs.create(make_job(user), max_unfinished=1) is False
    assert await store.jobs.create(make_job(other), max_unfinished=2) is True
    assert await store.jobs.create(make_job(other), max_unfinished=2) is True
    assert await store.jobs.count_unfinished(other) == 2
    # No cap (0, the default): always inserted.
    assert await store.jobs.create(refused, max_unfinished=0) is True
    assert await store.jobs.get(refused.job_id) == refused
    assert await store.jobs.create(make_job(user)) is True
    assert await store.jobs.count_unfinished(user) == 4
    assert await store.jobs.count_unfinished(other) == 2


@pytest.mark.parametrize("backend_spec", ["sqlite", "postgresql"], indirect=True)
async def test_cap_is_exact_under_racing_creates(backend: Backend) -> None:
    """Submits of one user racing through three stores on one database (three API
    processes): exactly `cap` go in, on the SQL stores (on MongoDB racing groups from
    several processes can pass it: the README says so); another user racing alongside is
    not held back; freed places are taken exactly again."""
    stores = [backend.open() for _ in range(3)]
    for store in stores:
        await store.init()
    user = oid()

    async def race(n: int, cap: int, other: str) -> tuple[list[bool], list[bool], list[Job]]:
        jobs = [make_job(user, at=T0 + timedelta(milliseconds=i)) for i in range(n)]
        others = [make_job(other) for _ in range(3)]
        calls = [stores[i % 3].jobs.create(j, max_unfinished=cap) for i, j in enumerate(jobs)]
        calls += [stores[i % 3].jobs.create(j, max_unfinished=cap) for i, j in enumerate(others)]
        results = await asyncio.gather(*calls)
        return list(results[:n]), list(results[n:]), jobs

    other = oid()
    mine, theirs, jobs = await race(30, 5, other)
    assert mine.count(True) == 5
    assert theirs == [True] * 3
    assert await stores[0].jobs.count_unfinished(user) == 5
    assert await stores[1].jobs.count_unfinished(other) == 3
    admitted = [j for j, ok in zip(jobs, mine, strict=True) if ok]
    assert [await stores[2].jobs.get(j.job_id) for j in admitted] == admitted
    refused = [j for j, ok in zip(jobs, mine, strict=True) if not ok]
    assert [await stores[2].jobs.get(j.job_id) for j in refused] == [None] * 25
    # Two places come free (a cancel, a completion): exactly two of the next race get in.
    now = T0 + timedelta(minutes=1)
    assert await stores[0].jobs.cancel(admitted[0].job_id, user, at=now)
    assert await stores[1].jobs.mark_processing(admitted[1].job_id, at=now, attempt=1)
    done = Completion("c", "m")
    assert await stores[1].jobs.mark_completed(admitted[1].job_id, result=done, at=now)
    mine, theirs, _ = await race(30, 5, oid())
    assert mine.count(True) == 2
    assert theirs == [True] * 3
    assert await stores[0].jobs.count_unfinished(user) == 5


@pytest.mark.parametrize("backend_spec", ["mongodb"], indirect=True)
async def test_cap_is_exact_for_one_process_racing_creates_on_mongodb(backend: Backend) -> None:
    """On MongoDB, creates racing through one store (one API process) go out one group at
    a time (`batching.Coalescer`, one flush out): exactly `cap` of one user's submits go
    in, however they are grouped; freed places are taken exactly again."""
    store = backend.open()
    await store.init()
    user = oid()

    async def race(n: int, cap: int) -> list[bool]:
        jobs = [make_job(user, at=T0 + timedelta(milliseconds=i)) for i in range(n)]
        others = [make_job(oid()) for _ in range(3)]
        calls = [store.jobs.create(j, max_unfinished=cap) for j in [*jobs, *others]]
        results = list(await asyncio.gather(*calls))
        assert results[n:] == [True] * 3  # other users are not held back
        return results[:n]

    assert (await race(30, 5)).count(True) == 5
    assert (await race(30, 5)).count(True) == 0  # full: nothing more
    assert await store.jobs.count_unfinished(user) == 5
    assert (await race(30, 7)).count(True) == 2  # two more places: exactly two
    assert await store.jobs.count_unfinished(user) == 7
    # A place comes free: exactly one of the next race gets in.
    now = T0 + timedelta(minutes=1)
    first = (await store.jobs.list_for_user(user, limit=1))[0]
    assert await store.jobs.cancel(first.job_id, user, at=now)
    assert (await race(30, 7)).count(True) == 1
    assert await store.jobs.count_unfinished(user) == 7


async def test_concurrent_creates_all_land_intact(store: Store) -> None:
    """Many creates at once (the PostgreSQL store sends them together): each caller gets
    its own answer and every record reads back exactly as written."""
    users = [oid() for _ in range(5)]
    jobs = [
        make_job(users[i % 5], at=T0 + timedelta(milliseconds=i), prompt=f"prompt {i}")
        for i in range(40)
    ]
    results = await asyncio.gather(*(store.jobs.create(j, max_unfinished=100) for j in jobs))
    assert results == [True] * 40
    for job in jobs:
        assert await store.jobs.get(job.job_id) == job
    assert [await store.jobs.count_unfinished(u) for u in users] == [8] * 5


async def test_cap_counts_only_queued_and_processing_jobs(store: Store) -> None:
    user = oid()
    completed, failed, processing = (make_job(user) for _ in range(3))
    for job in (completed, failed, processing):
        assert await store.jobs.create(job, max_unfinished=3) is True
    now = T0 + timedelta(minutes=1)
    for job in (completed, processing):
        assert await store.jobs.mark_processing(job.job_id, at=now, attempt=1)
    assert await store.jobs.mark_completed(completed.job_id, result=Completion("c", "m"), at=now)
    assert await store.jobs.mark_failed(failed.job_id, error="x", at=now)
    assert await store.jobs.count_unfinished(user) == 1  # the processing one
    # Final jobs free their places: one processing + one queued reach a cap of 2.
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2030, 6, 1, 14, 0, 0, 123456, tzinfo=plus2)
    queued = make_job(user, at=local, scheduled_for=local + timedelta(minutes=1))
    assert await store.jobs.create(queued, max_unfinished=2) is True
    assert await store.jobs.create(make_job(user), max_unfinished=2) is False
    assert await store.jobs.count_unfinished(user) == 2
    # Datetimes through the capped insert come back UTC with milliseconds.
    got = await store.jobs.get(queued.job_id)
    assert got is not None
    want = datetime(2030, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert (got.created_at, got.updated_at) == (want, want)
    assert got.scheduled_for == want + timedelta(minutes=1)
    assert_utc(got.scheduled_for)
    # Once the processing job completes, there is room again.
    assert await store.jobs.mark_completed(processing.job_id, result=Completion("c", "m"), at=now)
    assert await store.jobs.create(make_job(user), max_unfinished=2) is True
    assert await store.jobs.create(make_job(user), max_unfinished=2) is False


async def test_queued_processing_completed(store: Store) -> None:
    job = make_job(oid())
    await store.jobs.create(job)
    started = T0 + timedelta(seconds=61)
    running = await store.jobs.mark_processing(job.job_id, at=started, attempt=1)
    assert running is not None
    assert running.status is JobStatus.processing
    assert running.started_at == running.updated_at == started
    assert running.attempts == 1
    assert running.created_at == job.created_at

    # A redelivered message (at-least-once) may start it again; the attempt is recorded.
    again = await store.jobs.mark_processing(
        job.job_id, at=started + timedelta(seconds=5), attempt=2
    )
    assert again is not None
    assert again.attempts == 2
    assert again.status is JobStatus.processing

    done_at = started + timedelta(seconds=9)
    usage = {"prompt_tokens": 12, "completion_tokens": 340, "total_tokens": 352, "cost": 0.0012}
    result = Completion(content="# Outline\n- one", model="fake/model-1", usage=usage)
    assert await store.jobs.mark_completed(job.job_id, result=result, at=done_at) is True
    done = await store.jobs.get(job.job_id)
    assert done is not None
    assert done.status is JobStatus.completed
    assert done.generated_content == "# Outline\n- one"
    assert done.model == "fake/model-1"
    assert done.usage == usage
    assert done.completed_at == done.updated_at == done_at
    assert done.error is None
    assert done.attempts == 2

    # Final: never back to processing, never failed, never completed twice.
    assert await store.jobs.mark_processing(job.job_id, at=done_at, attempt=3) is None
    assert await store.jobs.mark_failed(job.job_id, error="late", at=done_at) is False
    other = Completion(content="other", model="m2")
    assert await store.jobs.mark_completed(job.job_id, result=other, at=done_at) is False
    assert await store.jobs.get(job.job_id) == done


async def test_finish_reason_is_kept_and_cleared_when_queued_again(store: Store) -> None:
    """Why the model stopped ("length": cut off at the token limit) is stored with the
    content, and a job queued again starts without it."""
    job = make_job(oid())
    await store.jobs.create(job)
    assert await store.jobs.get(job.job_id) is not None
    assert (await store.jobs.get(job.job_id)).finish_reason is None  # type: ignore[union-attr]
    assert await store.jobs.mark_processing(job.job_id, at=T0, attempt=1)
    cut = Completion("half a", "m", finish_reason="length")
    assert await store.jobs.mark_completed(job.job_id, result=cut, at=T0)
    done = await store.jobs.get(job.job_id)
    assert done is not None and done.finish_reason == "length"
    other = make_job(oid())
    await store.jobs.create(other)
    assert await store.jobs.mark_processing(other.job_id, at=T0, attempt=1)
    assert await store.jobs.mark_failed(other.job_id, error="x", at=T0)
    again = await store.jobs.requeue(
        other.job_id, other.user_id, scheduled_for=T0, at=T0, history=[{"status": "failed"}]
    )
    assert again is not None and again.finish_reason is None
    assert await store.jobs.mark_processing(other.job_id, at=T0, attempt=1)
    assert await store.jobs.mark_completed(other.job_id, result=Completion("t", "m"), at=T0)
    plain = await store.jobs.get(other.job_id)
    assert plain is not None and plain.finish_reason is None


async def test_completion_without_usage(store: Store) -> None:
    job = make_job(oid())
    await store.jobs.create(job)
    assert await store.jobs.mark_processing(job.job_id, at=T0, attempt=1)
    assert await store.jobs.mark_completed(job.job_id, result=Completion("text", "m"), at=T0)
    done = await store.jobs.get(job.job_id)
    assert done is not None
    assert done.usage is None


async def test_mark_completed_needs_processing(store: Store) -> None:
    job = make_job(oid())
    await store.jobs.create(job)
    assert await store.jobs.mark_completed(job.job_id, result=Completion("x", "m"), at=T0) is False
    assert await store.jobs.get(job.job_id) == job


async def test_failed_from_queued_and_from_processing(store: Store) -> None:
    queued, running = make_job(oid()), make_job(oid())
    for job in (queued, running):
        await store.jobs.create(job)
    failed_at = T0 + timedelta(seconds=30)
    assert await store.jobs.mark_failed(queued.job_id, error="LLM refused", at=failed_at) is True
    failed = await store.jobs.get(queued.job_id)
    assert failed is not None
    assert failed.status is JobStatus.failed
    assert failed.error == "LLM refused"
    assert failed.failed_at == failed.updated_at == failed_at
    assert failed.attempts == 0
    # Final.
    assert await store.jobs.mark_processing(queued.job_id, at=failed_at, attempt=1) is None
    assert (
        await store.jobs.mark_completed(queued.job_id, result=Completion("x", "m"), at=failed_at)
        is False
    )
    assert await store.jobs.mark_failed(queued.job_id, error="again", at=failed_at) is False
    assert await store.jobs.get(queued.job_id) == failed

    assert await store.jobs.mark_processing(running.job_id, at=T0, attempt=3)
    assert await store.jobs.mark_failed(running.job_id, error="timeout", at=failed_at) is True
    got = await store.jobs.get(running.job_id)
    assert got is not None
    assert (got.status, got.error, got.attempts) == (JobStatus.failed, "timeout", 3)


async def test_transitions_of_an_unknown_job(store: Store) -> None:
    assert await store.jobs.mark_processing("nope", at=T0, attempt=1) is None
    assert await store.jobs.mark_completed("nope", result=Completion("x", "m"), at=T0) is False
    assert await store.jobs.mark_failed("nope", error="x", at=T0) is False


async def test_concurrent_mark_processing_and_completion(store: Store) -> None:
    job = make_job(oid())
    await store.jobs.create(job)
    assert await store.jobs.mark_processing(job.job_id, at=T0, attempt=1)
    results = await asyncio.gather(
        *(
            store.jobs.mark_completed(job.job_id, result=Completion(f"r{i}", "m"), at=T0)
            for i in range(5)
        )
    )
    assert sorted(results) == [False, False, False, False, True]


async def test_delete(store: Store) -> None:
    user = oid()
    keep, gone = make_job(user), make_job(user)
    for job in (keep, gone):
        await store.jobs.create(job)
    await store.jobs.delete(gone.job_id)
    assert await store.jobs.get(gone.job_id) is None
    assert await store.jobs.get(keep.job_id) == keep
    await store.jobs.delete(gone.job_id)  # deleting twice is fine
    await store.jobs.delete("never-existed")
    assert [j.job_id for j in await store.jobs.list_for_user(user, limit=10)] == [keep.job_id]


# --- contents -----------------------------------------------------------------------------
async def test_create_once_is_idempotent_per_job(store: Store) -> None:
    user = oid()
    first = make_content(user, "job-1")
    stored, created = await store.contents.create_once(first)
    assert (stored, created) == (first, True)

    again = make_content(user, "job-1", title="Another title")
    stored, created = await store.contents.create_once(again)
    assert created is False
    assert stored == first
    assert stored.created_at.utcoffset() == timedelta(0)
    assert await store.contents.get_for_user(again.content_id, user) is None
    assert [c.content_id for c in await store.contents.list_for_user(user, limit=10)] == [
        first.content_id
    ]


async def test_create_once_races_create_one(store: Store) -> None:
    user = oid()
    attempts = [make_content(user, "job-race", title=f"t{i}") for i in range(6)]
    results = await asyncio.gather(*(store.contents.create_once(c) for c in attempts))
    assert sorted(created for _, created in results) == [False] * 5 + [True]
    winner = next(c for c, created in results if created)
    assert {c.content_id for c, _ in results} == {winner.content_id}
    assert len(await store.contents.list_for_user(user, limit=10)) == 1


async def test_contents_get_list_and_isolation(store: Store) -> None:
    alice, bob = oid(), oid()
    saved = []
    for i in range(4):
        content = make_content(
            alice, f"a{i}", created_at=T0 + timedelta(seconds=i), prompt=None, model=None
        )
        saved.append((await store.contents.create_once(content))[0])
    bobs, created = await store.contents.create_once(make_content(bob, "b0"))
    assert created

    got = await store.contents.get_for_user(saved[2].content_id, alice)
    assert got == saved[2]
    assert got is not None
    assert got.prompt is None and got.model is None
    assert await store.contents.get_for_user(saved[2].content_id, bob) is None
    assert await store.contents.get_for_job("a2", alice) == saved[2]
    assert await store.contents.get_for_job("a2", bob) is None
    assert await store.contents.get_for_job("no-such-job", alice) is None
    assert await store.contents.get_for_user(bobs.content_id, alice) is None
    assert await store.contents.get_for_user("no-such-content", alice) is None

    listed = await store.contents.list_for_user(alice, limit=10)
    assert [c.content_id for c in listed] == [c.content_id for c in reversed(saved)]
    assert listed[0] == saved[3]
    top2 = await store.contents.list_for_user(alice, limit=2)
    assert [c.content_id for c in top2] == [saved[3].content_id, saved[2].content_id]
    assert await store.contents.list_for_user(bob, limit=10) == [bobs]
    assert await store.contents.list_for_user(oid(), limit=10) == []


# --- SQL specifics ------------------------------------------------------------------------
SQL_ONLY = pytest.mark.parametrize(
    "backend_spec",
    ["postgresql", "postgresql-stockpool", "sqlite", "sqlite-stockpool"],
    indirect=True,
)


async def raw_sql(backend: Backend, statement: str) -> list[tuple[Any, ...]]:
    """Run one statement on the backend's database outside the store; its rows."""
    if backend.name == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(backend.url, timeout=5)
        try:
            return [tuple(r) for r in await conn.fetch(statement)]
        finally:
            await conn.close()
    import sqlite3

    def run() -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(backend.url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            return [tuple(r) for r in conn.execute(statement).fetchall()]
        finally:
            conn.close()

    return await asyncio.to_thread(run)


@SQL_ONLY
async def test_schema_version_is_recorded_and_a_newer_one_refused(backend: Backend) -> None:
    from smartgen.store.sql.schema import SCHEMA_VERSION

    store = backend.open()
    await store.init()
    rows = await raw_sql(backend, "SELECT id, version FROM schema_version")
    assert rows == [(1, SCHEMA_VERSION)]
    await raw_sql(backend, f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}")
    newer = backend.open()
    with pytest.raises(ConfigError, match="newer than this smartgen understands"):
        await newer.init()


async def insert_batch(store: Store, batch: list[tuple[Job, int]]) -> list[Any]:
    """One flush of the store's batched job inserts, (job, cap) each, as `create` sends them
    when calls arrive together."""
    jobs: Any = store.jobs
    rows = [(jobs.create_row(j), cap) for j, cap in batch]
    return list(await jobs._insert_batch(rows))


@pytest.mark.parametrize("backend_spec", ["postgresql"], indirect=True)
async def test_postgres_concurrent_creates_share_statements(backend: Backend) -> None:
    """Creates arriving while inserts are in flight go out together: far fewer statements
    than jobs."""
    store = backend.open()
    await store.init()
    jobs = [make_job(oid()) for _ in range(60)]
    assert all(await asyncio.gather(*(store.jobs.create(j, max_unfinished=5) for j in jobs)))
    inserts = store.jobs.inserts  # type: ignore[attr-defined]
    assert inserts.items == 60
    assert inserts.flushes <= 30
    assert [await store.jobs.get(j.job_id) for j in jobs] == jobs


@pytest.mark.parametrize("backend_spec", ["postgresql"], indirect=True)
async def test_postgres_batch_insert_applies_each_cap_as_if_one_by_one(backend: Backend) -> None:
    """The batch statement counts a user's earlier rows in the batch against the cap,
    exactly as separate inserts would, per user and per cap (0 = none)."""
    store = backend.open()
    await store.init()
    a, b, c = oid(), oid(), oid()
    assert await store.jobs.create(make_job(a), max_unfinished=0)
    done = make_job(a, status=JobStatus.completed)
    assert await store.jobs.create(done)  # finished jobs do not count
    waiting, waiting_jobs = make_batch(a, 5)
    await store.batches.create(waiting, waiting_jobs)  # nor do a batch's waiting jobs
    batch = [
        (make_job(a), 3),
        (make_job(b), 0),
        (make_job(a), 3),
        (make_job(c), 1),
        (make_job(a), 3),  # a's fourth unfinished job: refused
        (make_job(b), 0),
        (make_job(c), 1),  # c's second: refused
        (make_job(b), 0),
    ]
    results = await insert_batch(store, batch)
    assert results == [True, True, True, True, False, True, False, True]
    for (job, _), ok in zip(batch, results, strict=True):
        assert (await store.jobs.get(job.job_id) == job) is ok
    assert [await store.jobs.count_unfinished(u) for u in (a, b, c)] == [3, 3, 1]


@pytest.mark.parametrize("backend_spec", ["postgresql", "mongodb"], indirect=True)
async def test_concurrent_creates_on_a_dead_server_all_fail_cleanly(
    backend: Backend,
) -> None:
    store = backend.open_unreachable()
    results = await asyncio.gather(
        *(store.jobs.create(make_job(oid()), max_unfinished=5) for _ in range(8)),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results


@pytest.mark.parametrize("backend_spec", ["mongodb"], indirect=True)
async def test_mongo_batch_insert_applies_each_cap_as_if_one_by_one(backend: Backend) -> None:
    """A batch of concurrent creates is one count and one `insert_many`: each cap counts
    the user's earlier jobs in the batch, finished jobs and a batch's waiting ones do not
    count, and a job refused by the unique index fails alone."""
    from pymongo.errors import DuplicateKeyError

    store = backend.open()
    await store.init()
    a, b, c = oid(), oid(), oid()
    assert await store.jobs.create(make_job(a), max_unfinished=0)
    assert await store.jobs.create(make_job(a, status=JobStatus.completed))
    waiting, waiting_jobs = make_batch(a, 5)
    await store.batches.create(waiting, waiting_jobs)
    first = make_job(b)
    batch = [
        (make_job(a), 3),
        (first, 0),
        (make_job(a), 3),
        (make_job(c), 1),
        (make_job(a), 3),  # a's fourth unfinished job: refused
        (make_job(b, job_id=first.job_id), 0),  # the same job id: refused by the index
        (make_job(c), 1),  # c's second: refused
        (make_job(b), 0),
    ]
    jobs: Any = store.jobs
    results = list(await jobs._create_batch(batch))
    assert results[:5] == [True, True, True, True, False]
    assert isinstance(results[5], DuplicateKeyError)
    assert results[6:] == [False, True]
    for index, ((job, _), ok) in enumerate(zip(batch, results, strict=True)):
        if index != 5:
            assert (await store.jobs.get(job.job_id) == job) is ok
    assert await store.jobs.get(first.job_id) == first
    assert [await store.jobs.count_unfinished(u) for u in (a, b, c)] == [3, 2, 1]
    # Through the public call, concurrent creates went out in fewer trips than jobs.
    more = [make_job(oid()) for _ in range(30)]
    assert all(await asyncio.gather(*(store.jobs.create(j, max_unfinished=5) for j in more)))
    assert jobs.inserts.flushes < jobs.inserts.items
    assert [await store.jobs.get(j.job_id) for j in more] == more


@pytest.mark.parametrize("backend_spec", ["mongodb"], indirect=True)
async def test_mongo_batched_takes_and_completions_answer_each_as_if_alone(
    backend: Backend,
) -> None:
    """The worker's concurrent takes are one bulk write and one read, its completions one
    bulk write (and a read when some did not match): each caller still learns whether its
    own write went through, and gets the job as written."""
    from smartgen.store.mongo import _ms, _Take

    store = backend.open()
    await store.init()
    jobs: Any = store.jobs
    user = oid()
    queued, leased, later, held, done = (make_job(user) for _ in range(5))
    later = replace(later, scheduled_for=T0 + timedelta(hours=1))
    for job in (queued, leased, later, held, done):
        assert await store.jobs.create(job)
    now = T0 + timedelta(minutes=1, microseconds=123456)  # stored to the millisecond
    lease = now + timedelta(seconds=30)
    assert await store.jobs.mark_processing(held.job_id, at=now, attempt=1, lease_until=lease,
                                            owner="m1@w1")  # fmt: skip
    assert await store.jobs.mark_processing(done.job_id, at=now, attempt=1)
    assert await store.jobs.mark_completed(done.job_id, result=Completion("x", "m"), at=now)
    # processing, its lease run out (its worker died) / held without a lease
    expired, unleased = (make_job(user) for _ in range(2))
    for job, until in ((expired, now), (unleased, None)):
        assert await store.jobs.create(job)
        assert await store.jobs.mark_processing(job.job_id, at=now, attempt=1,
                                                lease_until=until, owner="m0@dead")  # fmt: skip
    at = _ms(now + timedelta(seconds=1))
    takes = [
        _Take(queued.job_id, at, 1, lease, "m2@w1", at),
        _Take(queued.job_id, at, 1, lease, "m3@w2", at),  # the same job: the first has it
        _Take(later.job_id, at, 1, lease, "m4@w1", at),  # not due yet
        _Take(held.job_id, at, 2, lease, "m5@w2", None),  # leased to another owner
        _Take(held.job_id, at, 2, lease, "m1@w1", None),  # its owner's retry: taken back
        _Take(done.job_id, at, 2, lease, "m6@w1", None),  # final
        _Take(oid(), at, 1, lease, "m7@w1", None),  # unknown
        _Take(expired.job_id, at, 2, lease, "m8@w2", None),  # lease ran out: taken over
        _Take(unleased.job_id, at, 2, lease, "m9@w2", None),  # no lease: taken over
    ]
    taken = await jobs._take_batch(takes)
    assert [t is not None for t in taken] == [True, False, False, False, True, False, False,
                                              True, True]  # fmt: skip
    for take, job in zip(takes[-2:], taken[-2:], strict=True):
        assert job is not None and job == await store.jobs.get(take.job_id)
        assert (job.lease_owner, job.attempts, job.lease_until) == (take.owner, 2, _ms(lease))
    assert taken[0] == await store.jobs.get(queued.job_id)
    assert taken[0].lease_owner == "m2@w1" and taken[0].started_at == at
    assert taken[4] == await store.jobs.get(held.job_id) and taken[4].attempts == 2
    completions = [
        (queued.job_id, Completion("first", "m"), at),
        (queued.job_id, Completion("second", "m"), at),  # already completed by the first
        (held.job_id, Completion("held", "m"), at),
        (done.job_id, Completion("again", "m"), at),  # was not processing
    ]
    assert await jobs._complete_batch(completions) == [True, False, True, False]
    finished = await store.jobs.get(queued.job_id)
    assert finished is not None and finished.generated_content == "first"
    assert (await store.jobs.get(done.job_id)).generated_content == "x"  # type: ignore[union-attr]
    # All matched: answered from the bulk write alone.
    both = [make_job(user) for _ in range(2)]
    for job in both:
        assert await store.jobs.create(job)
        assert await store.jobs.mark_processing(job.job_id, at=at, attempt=1)
    calls = [(j.job_id, Completion("ok", "m"), at) for j in both]
    assert await jobs._complete_batch(calls) == [True, True]
    # Through the public calls, concurrent takes and completions went out together.
    many = [make_job(user) for _ in range(12)]
    for job in many:
        assert await store.jobs.create(job)
    started = await asyncio.gather(
        *(store.jobs.mark_processing(j.job_id, at=at, attempt=1, owner=f"o{i}")
          for i, j in enumerate(many))
    )  # fmt: skip
    assert [j.job_id for j in started if j is not None] == [j.job_id for j in many]
    assert all(await asyncio.gather(
        *(store.jobs.mark_completed(j.job_id, result=Completion("c", "m"), at=at) for j in many)
    ))  # fmt: skip
    assert jobs.takes.flushes < jobs.takes.items
    assert jobs.completions.flushes < jobs.completions.items


async def test_a_take_with_the_stored_copy_answers_as_a_take_without(store: Store) -> None:
    """A queue message carries the job as first stored (`job_to_wire`); a take given that
    copy answers the job as the store holds it afterwards, whether the job is still the
    copy (MongoDB then reads nothing back) or was changed since (a new prompt, a retry),
    one take at a time or many at once."""
    user = oid()
    at = T0 + timedelta(minutes=1)
    lease = at + timedelta(seconds=30)

    def copy(job: Job) -> Job | None:  # as a worker reads it from the message
        return job_from_wire(json.loads(json.dumps(job_to_wire(job))))

    reads = _CountingReads.install(store)
    fresh, changed = make_job(user, options={"tone": "bold"}), make_job(user)
    for job in (fresh, changed):
        assert await store.jobs.create(job)
    assert await store.jobs.reschedule(
        changed.job_id, user, scheduled_for=changed.scheduled_for, at=T0 + timedelta(seconds=5),
        prompt="A new prompt",
    )  # fmt: skip
    for job in (fresh, changed):
        before = reads.count
        taken = await store.jobs.mark_processing(
            job.job_id, at=at, attempt=1, lease_until=lease, owner="m1@w1", expected=copy(job)
        )
        if reads.on:  # MongoDB: the unchanged copy is taken without a read, the other not
            assert reads.count - before == (0 if job is fresh else 1), job is fresh
        assert taken is not None and taken == await store.jobs.get(job.job_id)
        assert (taken.status, taken.lease_owner, taken.attempts) == (
            JobStatus.processing,
            "m1@w1",
            1,
        )
    assert (await store.jobs.get(changed.job_id)).prompt == "A new prompt"  # type: ignore[union-attr]
    # Taken already: the copy takes nothing (another owner's lease holds it).
    again = await store.jobs.mark_processing(
        fresh.job_id, at=at, attempt=1, lease_until=lease, owner="m2@w2", expected=copy(fresh)
    )
    assert again is None
    # Many at once, some changed since their copy: each as alone.
    many = [make_job(user, options={"length": "short", "i": i}) for i in range(8)]
    for job in many:
        assert await store.jobs.create(job)
    for job in many[::3]:
        assert await store.jobs.reschedule(
            job.job_id, user, scheduled_for=job.scheduled_for, at=T0 + timedelta(seconds=7)
        )
    before = reads.count
    taken_many = await asyncio.gather(
        *(store.jobs.mark_processing(j.job_id, at=at, attempt=1, owner=f"o{i}",
                                     expected=copy(j))
          for i, j in enumerate(many))
    )  # fmt: skip
    if reads.on:  # some changed since their copy: those are read back
        assert reads.count > before
    for job, taken in zip(many, taken_many, strict=True):
        assert taken is not None and taken == await store.jobs.get(job.job_id)
    unchanged = [make_job(user) for _ in range(6)]
    for job in unchanged:
        assert await store.jobs.create(job)
    before = reads.count
    taken_many = await asyncio.gather(
        *(store.jobs.mark_processing(j.job_id, at=at, attempt=1, expected=copy(j))
          for j in unchanged)
    )  # fmt: skip
    assert reads.count == before  # (0 on SQL stores, which count nothing)
    for job, taken in zip(unchanged, taken_many, strict=True):
        assert taken is not None and taken == await store.jobs.get(job.job_id)
    # A copy of another job, or of a job no longer queued, is no copy: the usual take.
    other = make_job(user)
    assert await store.jobs.create(other)
    taken = await store.jobs.mark_processing(
        other.job_id, at=at, attempt=1, expected=copy(replace(fresh, job_id=other.job_id[::-1]))
    )
    assert taken is not None and taken == await store.jobs.get(other.job_id)


class _CountingReads:
    """The reads of MongoDB's jobs collection (`find`, `find_one`), counted."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.count, self.on = inner, 0, True

    @classmethod
    def install(cls, store: Store) -> _CountingReads:
        jobs: Any = store.jobs
        if store.name != "mongodb":
            counting = cls(None)
            counting.on = False
            return counting
        counting = cls(jobs._c)
        jobs._c = counting
        return counting

    def find(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self.inner.find(*args, **kwargs)

    def find_one(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self.inner.find_one(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_job_on_the_wire_reads_back_as_it_was() -> None:
    job = make_job(oid(), options={"tone": "bold", "voice": {"examples": ["a", "b"]}},
                   history=[{"status": "failed"}], batch_id="b1", batch_row=3)  # fmt: skip
    assert job_from_wire(json.loads(json.dumps(job_to_wire(job)))) == job
    wire = job_to_wire(job)
    for broken in (
        None, [], {**wire, "status": "paused"}, {**wire, "created_at": "yesterday"},
        {**wire, "updated_at": "2030-01-02T03:04:05"},  # no time zone
        {k: v for k, v in wire.items() if k != "prompt"},
    ):  # fmt: skip
        assert job_from_wire(broken) is None


@pytest.mark.parametrize("backend_spec", ["sqlite"], indirect=True)
async def test_sqlite_batch_insert_is_one_transaction_with_each_row_on_its_own(
    backend: Backend,
) -> None:
    """Concurrent creates share one commit; within it each insert counts the rows before it
    against its cap, and one that fails is undone alone and reported to its caller."""
    import sqlite3

    store = backend.open()
    await store.init()
    a, b = oid(), oid()
    first, dup = make_job(a), make_job(b)
    clash = make_job(b, job_id=first.job_id)  # the same job id: refused by the unique index
    batch = [(first, 2), (make_job(a), 2), (clash, 0), (make_job(a), 2), (dup, 0)]
    results = await insert_batch(store, batch)
    assert results[:2] == [True, True]
    assert isinstance(results[2], sqlite3.IntegrityError)
    assert results[3:] == [False, True]  # a's third job is over its cap of 2
    assert await store.jobs.get(first.job_id) == first
    assert await store.jobs.get(dup.job_id) == dup
    assert await store.jobs.count_unfinished(a) == 2
    assert await store.jobs.count_unfinished(b) == 1
    # Through the public call, concurrent creates went out in fewer trips than jobs.
    more = [make_job(oid()) for _ in range(30)]
    assert all(await asyncio.gather(*(store.jobs.create(j, max_unfinished=5) for j in more)))
    inserts = store.jobs.inserts  # type: ignore[attr-defined]
    assert inserts.flushes < inserts.items


@pytest.mark.parametrize("backend_spec", ["postgresql"], indirect=True)
async def test_postgres_a_refused_row_fails_only_its_own_call_in_a_batch(
    backend: Backend,
) -> None:
    """A value the server refuses (NUL in text; the API refuses it before this) or a job
    id clash fails the call it belongs to; the rest of its batch goes in, caps still
    counted in arrival order."""
    import asyncpg

    store = backend.open()
    await store.init()
    a = oid()
    first = make_job(a)
    batch = [
        (first, 2),
        (make_job(a, prompt="bad\x00prompt"), 2),
        (make_job(a, job_id=first.job_id), 0),
        (make_job(a), 2),
        (make_job(a), 2),  # a's third unfinished job: over the cap
        (make_job(oid()), 0),
    ]
    results = await insert_batch(store, batch)
    assert isinstance(results[1], asyncpg.PostgresError), results
    assert isinstance(results[2], asyncpg.UniqueViolationError), results
    assert [results[0], *results[3:]] == [True, True, False, True]
    for (job, _), ok in zip(batch, results, strict=True):
        if job.job_id != first.job_id:
            assert (await store.jobs.get(job.job_id) == job) is (ok is True)
    assert await store.jobs.get(first.job_id) == first
    assert await store.jobs.count_unfinished(a) == 2


@pytest.mark.parametrize("backend_spec", ["sqlite", "postgresql"], indirect=True)
async def test_sql_batched_takes_and_completions_decide_as_if_one_by_one(
    backend: Backend,
) -> None:
    """The worker's concurrent transitions share a trip (on SQLite, a commit), and each call
    gets the outcome it would have had alone, in arrival order, also when one batch holds
    the same job twice (a redelivered message): lease owner m1 takes a job, m2 is refused,
    m1's own retry takes it back; the second completion of a job finds it completed."""
    store = backend.open()
    await store.init()
    jobs = [make_job(oid()) for _ in range(6)]
    for job in jobs:
        assert await store.jobs.create(job)
    f1, f2, j0, j1, j2, never = (job.job_id for job in jobs)
    now = utcnow()
    lease = now + timedelta(minutes=1)

    def take(job_id: str, owner: str, attempt: int = 1) -> Any:
        return store.jobs.mark_processing(
            job_id, at=now, attempt=attempt, lease_until=lease, owner=owner
        )

    # The first call fills the one flush slot; the rest arrive meanwhile: one batch.
    taken = await asyncio.gather(
        take(f1, "m1"),
        take(f2, "m1"),
        take(j0, "m1"),
        take(j1, "m1"),
        take(j0, "m2"),  # held by m1's lease: refused
        take(j1, "m1", attempt=2),  # the same message's retry: taken again
        take(j2, "m1"),
        take("no-such-job", "m1"),
    )
    assert [t is not None for t in taken] == [True, True, True, True, False, True, True, False]
    assert taken[5].attempts == 2 and taken[5].lease_owner == "m1"
    assert taken[2].status is JobStatus.processing and taken[2].started_at == now
    takes = store.jobs.takes  # type: ignore[attr-defined]
    assert (takes.items, takes.flushes) == (8, 2)

    def complete(job_id: str, text: str) -> Any:
        return store.jobs.mark_completed(job_id, result=Completion(text, "m"), at=now)

    written = await asyncio.gather(
        complete(f1, "f1"),
        complete(f2, "f2"),
        complete(j0, "first"),
        complete(j1, "j1"),
        complete(j0, "second"),  # already completed by the call before it
        complete(never, "x"),  # queued, never taken
        complete(j2, "j2"),
    )
    assert written == [True, True, True, True, False, False, True]
    completions = store.jobs.completions  # type: ignore[attr-defined]
    assert (completions.items, completions.flushes) == (7, 2)
    got = {job.job_id: await store.jobs.get(job.job_id) for job in jobs}
    assert got[j0] is not None and got[j0].generated_content == "first"
    assert got[j1] is not None and got[j1].attempts == 2
    assert got[never] == jobs[5]
    for job_id in (f1, f2, j0, j1, j2):
        done = got[job_id]
        assert done is not None and done.status is JobStatus.completed


@pytest.mark.parametrize("backend_spec", ["sqlite", "postgresql"], indirect=True)
async def test_sql_batched_transitions_on_a_dead_store_all_fail_cleanly(
    backend: Backend,
) -> None:
    store = backend.open_unreachable()
    takes = await asyncio.gather(
        *(store.jobs.mark_processing(uuid.uuid4().hex, at=T0, attempt=1) for _ in range(6)),
        return_exceptions=True,
    )
    completions = await asyncio.gather(
        *(
            store.jobs.mark_completed(uuid.uuid4().hex, result=Completion("x", "m"), at=T0)
            for _ in range(6)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) for r in takes + completions), takes + completions


@pytest.mark.parametrize("backend_spec", ["postgresql"], indirect=True)
async def test_postgres_a_refused_transition_fails_only_its_own_call_in_a_batch(
    backend: Backend,
) -> None:
    """A batch of takes or completions is one pipelined trip that the server undoes whole
    when one statement is refused (here text with NUL): each call then runs again alone,
    so only the refused one's caller hears of it, and the rest are written once."""
    import asyncpg

    store = backend.open()
    await store.init()
    jobs = [make_job(oid()) for _ in range(4)]
    for job in jobs:
        assert await store.jobs.create(job)
    now = utcnow()

    def take(job_id: str, owner: str) -> Any:
        return store.jobs.mark_processing(job_id, at=now, attempt=1, owner=owner)

    taken = await asyncio.gather(
        take(jobs[0].job_id, "m"),  # alone: fills the flush slot
        take(jobs[1].job_id, "m"),
        take(jobs[2].job_id, "bad\x00owner"),
        take(jobs[3].job_id, "m"),
        return_exceptions=True,
    )
    assert isinstance(taken[2], asyncpg.PostgresError), taken
    assert [t.job_id for t in taken if isinstance(t, Job)] == [
        jobs[0].job_id, jobs[1].job_id, jobs[3].job_id,
    ]  # fmt: skip
    assert store.jobs.takes.flushes == 2  # type: ignore[attr-defined]
    refused = await store.jobs.get(jobs[2].job_id)
    assert refused is not None and refused.status is JobStatus.queued

    def complete(job_id: str, text: str) -> Any:
        return store.jobs.mark_completed(job_id, result=Completion(text, "m"), at=now)

    written = await asyncio.gather(
        complete(jobs[0].job_id, "zero"),
        complete(jobs[1].job_id, "one\x00"),
        complete(jobs[3].job_id, "three"),
        complete(jobs[3].job_id, "again"),  # already completed by the call before it
        return_exceptions=True,
    )
    assert written[0] is True and written[2:] == [True, False], written
    assert isinstance(written[1], asyncpg.PostgresError), written
    got = [await store.jobs.get(job.job_id) for job in jobs]
    assert [g.status if g else None for g in got] == [
        JobStatus.completed, JobStatus.processing, JobStatus.queued, JobStatus.completed,
    ]  # fmt: skip
    assert got[3] is not None and got[3].generated_content == "three"


@pytest.mark.parametrize("backend_spec", ["postgresql"], indirect=True)
async def test_postgres_store_survives_a_dropped_connection(backend: Backend) -> None:
    """A connection the server terminates fails at most the statement that meets it (503),
    and the next call gets a fresh connection; nothing is left half-written."""
    import asyncpg

    store = backend.open()
    await store.init()
    user = make_user()
    await store.users.create(user)
    admin = await asyncpg.connect(backend.url, timeout=5)
    try:
        await admin.execute(
            # Only this test's database: other tests (and other runs) share the server.
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'smartgen' AND datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    outcomes: list[str] = []
    for _ in range(3):
        try:
            got = await store.users.get(user.user_id)
            outcomes.append("ok" if got == user else "wrong")
        except StoreUnavailable:
            outcomes.append("unavailable")
    assert outcomes[-1] == "ok"
    assert "wrong" not in outcomes
    assert outcomes.count("unavailable") <= 1


@pytest.mark.parametrize("backend_spec", ["postgresql"], indirect=True)
async def test_postgres_pool_is_bounded_fair_and_drops_interrupted_connections(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg

    from smartgen.store.sql import fair_pool, postgres

    store = postgres.PostgresStore(backend.url, pool_size=2, timeout=1.0)
    backend.opened.append(store)
    await store.init()
    pool = store._pool

    async def server_connections() -> int:
        conn = await asyncpg.connect(backend.url, timeout=5)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = 'smartgen' AND datname = current_database()"
                )
            )
        finally:
            await conn.close()

    # Ten callers, two connections: all served, in the order they asked.
    order: list[int] = []

    async def call(i: int) -> None:
        async with pool.connection() as conn:
            order.append(i)
            await conn.execute("SELECT pg_sleep(0.02)")

    await asyncio.gather(*(call(i) for i in range(2)))  # both connections open
    order.clear()
    await asyncio.gather(*(call(i) for i in range(10)))
    assert order == list(range(10))
    assert len(pool._idle) == 2
    assert await server_connections() == 2

    # Both connections busy: a third caller gives up after `timeout` (503), not never.
    async with pool.connection(), pool.connection():
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.users.get(oid()), 10)

    # A call cancelled with its statement in flight: that connection is not reused.
    before = {id(c) for c, _ in pool._idle}

    async def sleep_on_server() -> None:
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_sleep(5)")

    task = asyncio.create_task(sleep_on_server())
    await asyncio.sleep(0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    after = {id(c) for c, _ in pool._idle}
    assert len(after) == 1 and after < before
    user = make_user()
    await store.users.create(user)  # the store still works
    assert await store.users.get(user.user_id) == user

    # Idle connections past their lifetime are closed.
    monkeypatch.setattr(fair_pool, "IDLE_LIFETIME_SECONDS", 0.0)
    await asyncio.gather(*(call(i) for i in range(4)))
    assert len(pool._idle) <= 1

    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.users.get(user.user_id)


def test_postgres_dsn_keeps_libpq_spelling() -> None:
    from smartgen.store.sql.url import parse_database_url

    url = parse_database_url("postgres://u:p%40ss@db.example:6543/app?sslmode=require")
    assert url.target == "postgresql://u:p%40ss@db.example:6543/app?sslmode=require"


@pytest.mark.parametrize("backend_spec", ["sqlite", "sqlite-stockpool"], indirect=True)
async def test_sqlite_uses_wal_and_creates_its_directory(backend: Backend) -> None:
    import sqlite3

    store = backend.open()
    path = Path(backend.url.removeprefix("sqlite:///"))
    assert not await asyncio.to_thread(path.parent.exists)
    await store.init()
    assert await asyncio.to_thread(path.is_file)
    await store.users.create(make_user())  # the store's own connections are open

    def pragmas() -> tuple[str, int]:
        conn = sqlite3.connect(path)
        try:
            return (
                conn.execute("PRAGMA journal_mode").fetchone()[0],
                len(conn.execute("SELECT * FROM users").fetchall()),
            )
        finally:
            conn.close()

    assert await asyncio.to_thread(pragmas) == ("wal", 1)
    if backend_kind(store) == "sqlite":
        from smartgen.store.sql.sqlite import SqliteStore
        from smartgen.store.sql.sqlite_pool import BUSY_TIMEOUT_MS

        assert isinstance(store, SqliteStore)
        busy = await store._pool.run(
            lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0], writes=False
        )
        assert busy == BUSY_TIMEOUT_MS == 5000


@pytest.mark.parametrize("backend_spec", ["sqlite"], indirect=True)
async def test_sqlite_pool_keeps_a_connection_until_its_thread_is_done(backend: Backend) -> None:
    """A call cancelled while its statement runs in a pool thread: the connection is
    not handed to anyone else until that statement ends, then it is reused."""
    from smartgen.store.sql.sqlite import SqliteStore

    store = SqliteStore(backend.url, pool_size=1, timeout=30)
    backend.opened.append(store)
    await store.init()
    (connection,) = store._pool._idle  # the one connection, opened by init()
    long = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
    ended: list[str] = []

    def slow(conn: Any) -> int:
        value = int(conn.execute(long + "SELECT count(*) FROM c").fetchone()[0])
        ended.append("slow")
        return value

    task = asyncio.create_task(store._pool.run(slow, writes=True))
    await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert ended == []  # still running (about half a second here)
    # So its turn is not given away: a read finds no connection free.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store._pool.run(lambda conn: 1, writes=False), 0.2)
    assert ended == []
    # The only connection is still busy in its thread: this call waits for it.
    user = make_user()
    await asyncio.wait_for(store.users.create(user), 30)
    assert ended == ["slow"]
    assert await store.users.get(user.user_id) == user
    assert store._pool._idle == [connection]  # given back when its thread was done, reused


@pytest.mark.parametrize("backend_spec", ["sqlite"], indirect=True)
async def test_sqlite_writes_of_one_process_never_meet_in_the_busy_handler(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no busy timeout at all, any two writes of this process that reached SQLite's
    lock together would fail ("database is locked"): every write of a burst of every kind
    (single statements and batched transactions) succeeds, while reads run beside them."""
    from smartgen.store.sql import sqlite, sqlite_pool

    store = sqlite.SqliteStore(backend.url, pool_size=8, timeout=30)
    backend.opened.append(store)
    await store.init()
    monkeypatch.setattr(sqlite_pool, "BUSY_TIMEOUT_MS", 0)  # connections opened from here on
    users = [make_user() for _ in range(20)]
    jobs = [make_job(u.user_id) for u in users for _ in range(3)]
    await asyncio.gather(*(store.users.create(u) for u in users))
    created = await asyncio.gather(
        *(store.jobs.create(j, max_unfinished=5) for j in jobs),
        *(store.users.get(u.user_id) for u in users),
    )
    assert created[: len(jobs)] == [True] * len(jobs)
    assert created[len(jobs) :] == users
    taken = await asyncio.gather(
        *(store.jobs.mark_processing(j.job_id, at=utcnow(), attempt=1) for j in jobs)
    )
    assert all(t is not None for t in taken)
    done = await asyncio.gather(
        *(
            store.jobs.mark_completed(j.job_id, result=Completion("x", "m"), at=utcnow())
            for j in jobs
        ),
        *(store.contents.create_once(make_content(j.user_id, j.job_id)) for j in jobs[:20]),
    )
    assert done[: len(jobs)] == [True] * len(jobs)
    assert all(saved for _, saved in done[len(jobs) :])
    assert len(store._pool._idle) > 1  # the reads and writes did use several connections


def backend_kind(store: Store) -> str:
    return "sqlite" if type(store).__name__ == "SqliteStore" else "other"


@SQL_ONLY
async def test_a_database_written_by_smartgen_0_1_opens_unchanged(backend: Backend) -> None:
    """smartgen 0.1 created schema version 1 through SQLAlchemy's `create_all`; its DDL and
    rows (as it wrote them) are kept in tests/data. Today's store opens such a database
    without changing it, reads every record back and runs the transitions on it."""
    dialect = backend.name
    if dialect == "sqlite":
        Path(backend.url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    ddl = (DATA / f"schema_v1_sqlalchemy_{dialect}.sql").read_text()
    for statement in filter(str.strip, ddl.split(";")):
        await raw_sql(backend, statement)
    from smartgen.store.sql.schema import SCHEMA_VERSION

    store = backend.open()
    await store.init()
    assert await raw_sql(backend, "SELECT id, version FROM schema_version") == [(1, SCHEMA_VERSION)]
    at = datetime(2026, 1, 11, 19, 34, 18, 356000, tzinfo=UTC)
    user = await store.users.get("65a0411b9c1e4c0b8f3a7d21")
    assert user == User("65a0411b9c1e4c0b8f3a7d21", "ada@example.com", "$argon2id$stub", at)
    job = await store.jobs.get("7f0c5e9a-1111-4b8e-9d1f-2a3b4c5d6e7f")
    assert job is not None
    assert (job.status, job.usage, job.scheduled_for, job.attempts) == (
        JobStatus.completed,
        {"total_tokens": 7},
        at + timedelta(seconds=60),
        1,
    )
    assert job.generated_content == "# Sourdough"
    content = await store.contents.get_for_user(
        "0c9d8e7f-2222-4a1b-8c3d-4e5f6a7b8c9d", user.user_id
    )
    assert content is not None and content.title == "Sourdough" and content.created_at == at
    queued = await store.jobs.get("7f0c5e9a-3333-4b8e-9d1f-2a3b4c5d6e7f")
    assert queued is not None and queued.status == JobStatus.queued
    taken = await store.jobs.mark_processing(queued.job_id, at=at, attempt=1, owner="m1")
    assert taken is not None and taken.status == JobStatus.processing
    result = Completion(
        content="# Done", model="fake/model-1", usage={"total_tokens": 9}, finish_reason="length"
    )
    assert await store.jobs.mark_completed(queued.job_id, result=result, at=at)
    upgraded = await store.jobs.get(queued.job_id)
    assert upgraded is not None and upgraded.finish_reason == "length"
    assert [j.job_id for j in await store.jobs.list_for_user(user.user_id, limit=5)] == [
        queued.job_id,
        job.job_id,
    ]
    # The columns added since version 1 work on the upgraded table.
    cancelled = await store.jobs.cancel(queued.job_id, user.user_id, at=at)
    assert cancelled is None  # completed above: final
    again = await store.jobs.requeue(
        job.job_id, user.user_id, scheduled_for=at, at=at, history=[{"status": "x"}]
    )
    assert again is None  # completed jobs are not queued again
    # Version 5: old contents have no tags and are found by the library's search.
    assert content.tags == [] and content.updated_at == at
    found = await store.contents.search(user.user_id, limit=5, query="sourdough")
    assert found == [content]


@pytest.mark.parametrize(
    ("raw", "backend", "target"),
    [
        (
            "postgresql://u:p@db.example:6543/app",
            "postgresql",
            "postgresql://u:p@db.example:6543/app",
        ),
        (
            "postgres://u:p@db.example:6543/app",
            "postgresql",
            "postgresql://u:p@db.example:6543/app",
        ),
        (
            "postgresql+asyncpg://u:p@db.example:6543/app",
            "postgresql",
            "postgresql://u:p@db.example:6543/app",
        ),
        ("sqlite:///rel/smartgen.db", "sqlite", os.path.abspath("rel/smartgen.db")),
        ("sqlite+aiosqlite:////abs/smartgen.db", "sqlite", "/abs/smartgen.db"),
    ],
)
def test_database_urls_are_normalised(raw: str, backend: str, target: str) -> None:
    from smartgen.store.sql.url import parse_database_url

    url = parse_database_url(raw)
    assert (url.backend, url.target) == (backend, target)
    assert "p@" not in url.description


def test_sslmode_stays_as_libpq_spells_it() -> None:
    from smartgen.store.sql.url import parse_database_url

    url = parse_database_url("postgres://u@h/db?sslmode=require")
    assert url.target == "postgresql://u@h/db?sslmode=require"


@pytest.mark.parametrize(
    "raw",
    ["mysql://u@h/db", "sqlite://", "sqlite:///:memory:", "not a url", "postgresql://h:x/db"],
)
def test_unsupported_database_urls_are_config_errors(raw: str) -> None:
    from smartgen.store.sql.url import parse_database_url

    with pytest.raises(ConfigError, match="DATABASE_URL"):
        parse_database_url(raw)


def settings_for(**kw: Any) -> Any:
    from smartgen.config import Settings

    base = {"mongo_uri": None, "database_url": None}
    return Settings(_env_file=None, **{**base, **kw})


def test_describe_store_names_the_store_without_credentials() -> None:
    mongo = settings_for(
        mongo_uri="mongodb://admin:s3cret@127.0.0.1:27017/app?authSource=admin", mongo_db="smartgen"
    )
    assert describe_store(mongo) == "mongodb (127.0.0.1:27017/smartgen)"
    pg = settings_for(database_url="postgres://admin:s3cret@db.internal/app")
    assert describe_store(pg) == "postgresql (db.internal:5432/app)"
    assert describe_store(settings_for(data_dir=".smartgen")) == (
        "sqlite (./.smartgen/smartgen.db, embedded)"
    )
    assert describe_store(settings_for(data_dir="/var/lib/smartgen")) == (
        "sqlite (/var/lib/smartgen/smartgen.db, embedded)"
    )
    for settings in (mongo, pg):
        assert "s3cret" not in describe_store(settings)


async def test_open_store_follows_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smartgen.store.mongo import MongoStore
    from smartgen.store.sql.postgres import PostgresStore
    from smartgen.store.sql.sqlite import SqliteStore

    opened: list[Store] = []
    try:
        mongo = open_store(settings_for(mongo_uri="mongodb://127.0.0.1:1/app", mongo_db="app"))
        opened.append(mongo)
        assert isinstance(mongo, MongoStore)
        pg = open_store(settings_for(database_url="postgresql://u@127.0.0.1:1/app"))
        opened.append(pg)
        assert isinstance(pg, PostgresStore)
        assert pg.name == "postgresql"
        monkeypatch.chdir(tmp_path)
        embedded = open_store(settings_for(data_dir=".smartgen"))
        opened.append(embedded)
        assert isinstance(embedded, SqliteStore)
        assert embedded.name == "sqlite"
        assert embedded.path == str(tmp_path / ".smartgen" / "smartgen.db")
        await embedded.init()
        assert await asyncio.to_thread((tmp_path / ".smartgen" / "smartgen.db").is_file)
        named = open_store(settings_for(database_url=f"sqlite:///{tmp_path / 'other.db'}"))
        opened.append(named)
        assert isinstance(named, SqliteStore)
        assert named.path == str(tmp_path / "other.db")
    finally:
        for store in opened:
            await store.close()


def test_real_settings_select_the_embedded_sqlite_file(tmp_path: Path) -> None:
    from smartgen.config import Settings

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, mongo_uri=None, database_url=None, data_dir=str(tmp_path / "d")
    )
    assert describe_store(settings) == f"sqlite ({tmp_path / 'd' / 'smartgen.db'}, embedded)"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, mongo_uri=None, database_url="postgresql://u:pw@127.0.0.1:1/app"
    )
    assert describe_store(settings) == "postgresql (127.0.0.1:1/app)"


def test_a_mongodb_deployment_never_imports_a_sql_driver() -> None:
    code = (
        "import sys, smartgen.store, smartgen.store.mongo\n"
        "from smartgen.config import Settings\n"
        "settings = Settings(_env_file=None, mongo_uri='mongodb://h/db')\n"
        "smartgen.store.describe_store(settings)\n"
        "smartgen.store.open_store(settings)\n"
        "for name in ('asyncpg', 'sqlite3', 'sqlalchemy'):\n"
        "    assert name not in sys.modules, f'{name} imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_processing_lease_blocks_a_second_delivery(store: Store) -> None:
    user = oid()
    job = make_job(user)
    await store.jobs.create(job)
    now = T0 + timedelta(hours=2)
    taken = await store.jobs.mark_processing(
        job.job_id, at=now, attempt=1, lease_until=now + timedelta(seconds=30)
    )
    assert taken is not None and taken.lease_until == now + timedelta(seconds=30)
    # Another delivery while the lease runs: refused.
    assert (
        await store.jobs.mark_processing(job.job_id, at=now + timedelta(seconds=10), attempt=2)
        is None
    )
    # After the lease: taken over.
    later = now + timedelta(seconds=31)
    again = await store.jobs.mark_processing(job.job_id, at=later, attempt=2, lease_until=None)
    assert again is not None and again.attempts == 2 and again.lease_until is None
    # Without a lease, a redelivery may take it at once.
    assert await store.jobs.mark_processing(job.job_id, at=later, attempt=3) is not None
    # The lease's owner (a retry of the same queue message) may take it back at once;
    # another owner may not.
    held = await store.jobs.mark_processing(
        job.job_id, at=later, attempt=4, lease_until=later + timedelta(minutes=1), owner="m1"
    )
    assert held is not None and held.lease_owner == "m1"
    assert await store.jobs.mark_processing(job.job_id, at=later, attempt=5, owner="m2") is None
    retry = await store.jobs.mark_processing(
        job.job_id, at=later, attempt=5, lease_until=later + timedelta(minutes=1), owner="m1"
    )
    assert retry is not None and retry.attempts == 5


async def test_release_lease_ends_only_its_owners_lease(store: Store) -> None:
    job = make_job(oid())
    await store.jobs.create(job)
    now = T0 + timedelta(hours=2)
    lease = now + timedelta(minutes=5)
    held = await store.jobs.mark_processing(
        job.job_id, at=now, attempt=1, lease_until=lease, owner="m1@w1"
    )
    assert held is not None
    # Another worker's delivery of the same message may not take it while the lease runs.
    assert await store.jobs.mark_processing(job.job_id, at=now, attempt=2, owner="m1@w2") is None
    assert await store.jobs.release_lease(job.job_id, owner="m1@w2") is False
    assert (await store.jobs.get(job.job_id)).lease_until == lease  # type: ignore[union-attr]
    assert await store.jobs.release_lease(job.job_id, owner="m1@w1") is True
    taken = await store.jobs.mark_processing(
        job.job_id, at=now, attempt=2, lease_until=lease, owner="m1@w2"
    )
    assert taken is not None and taken.lease_owner == "m1@w2" and taken.attempts == 2
    # Nothing to release on a job that is not processing.
    await store.jobs.mark_failed(job.job_id, error="x", at=now)
    assert await store.jobs.release_lease(job.job_id, owner="m1@w2") is False


async def test_release_leases_of_a_dead_worker(store: Store) -> None:
    user = oid()
    now = T0 + timedelta(hours=2)
    lease = now + timedelta(minutes=5)
    jobs = [make_job(user) for _ in range(5)]
    for job in jobs:
        await store.jobs.create(job)
    # Worker names with LIKE and regex characters, and one that ends like another's.
    owners = ["a@w_1%.x", "b@w_1%.x", "c@wX1%.x", "d@other-w_1%.x", None]
    for job, owner in zip(jobs, owners, strict=True):
        await store.jobs.mark_processing(
            job.job_id, at=now, attempt=1, lease_until=lease, owner=owner
        )
    finished = make_job(user)
    await store.jobs.create(finished)
    await store.jobs.mark_processing(
        finished.job_id, at=now, attempt=1, lease_until=lease, owner="e@w_1%.x"
    )
    await store.jobs.mark_completed(
        finished.job_id, result=Completion(content="x", model="m"), at=now
    )

    released = await store.jobs.release_leases_of("w_1%.x", limit=100)
    assert sorted(j.job_id for j in released) == sorted(j.job_id for j in jobs[:2])
    assert all(j.lease_until is None and j.status == JobStatus.processing for j in released)
    for job in jobs[:2]:
        stored = await store.jobs.get(job.job_id)
        assert stored is not None and stored.lease_until is None
        # Released: a rescue delivery on a live worker takes it at once.
        assert (
            await store.jobs.mark_processing(job.job_id, at=now, attempt=1, owner="r@live")
            is not None
        )
    for job in jobs[2:4]:
        stored = await store.jobs.get(job.job_id)
        assert stored is not None and stored.lease_until == lease
    assert await store.jobs.release_leases_of("w_1%.x", limit=100) == []
    assert await store.jobs.release_leases_of("nobody", limit=100) == []


# --- job control ----------------------------------------------------------------------------
async def test_cancel_queued_and_processing_jobs_of_their_owner_only(store: Store) -> None:
    user, other = oid(), oid()
    queued, processing, done = (make_job(user) for _ in range(3))
    for job in (queued, processing, done):
        await store.jobs.create(job)
    at = T0 + timedelta(seconds=61)
    await store.jobs.mark_processing(processing.job_id, at=at, attempt=1)
    await store.jobs.mark_processing(done.job_id, at=at, attempt=1)
    await store.jobs.mark_completed(done.job_id, result=Completion("x", "m"), at=at)
    assert await store.jobs.cancel(queued.job_id, other, at=at) is None  # not theirs
    assert await store.jobs.cancel(uuid.uuid4().hex, user, at=at) is None
    cancelled_at = at + timedelta(seconds=1)
    for job in (queued, processing):
        cancelled = await store.jobs.cancel(job.job_id, user, at=cancelled_at)
        assert cancelled is not None
        assert (cancelled.status, cancelled.cancelled_at, cancelled.updated_at) == (
            JobStatus.cancelled,
            cancelled_at,
            cancelled_at,
        )
        assert await store.jobs.get(job.job_id) == cancelled
        assert await store.jobs.cancel(job.job_id, user, at=cancelled_at) is None  # final
    assert await store.jobs.cancel(done.job_id, user, at=at) is None
    # One final state: a cancelled job is never taken, completed or failed.
    later = at + timedelta(hours=1)
    for job in (queued, processing):
        assert await store.jobs.mark_processing(job.job_id, at=later, attempt=2) is None
        assert not await store.jobs.mark_completed(
            job.job_id, result=Completion("late", "m"), at=later
        )
        assert not await store.jobs.mark_failed(job.job_id, error="late", at=later)
        final = await store.jobs.get(job.job_id)
        assert final is not None and final.status == JobStatus.cancelled
        assert final.generated_content is None


async def test_reschedule_only_while_queued(store: Store) -> None:
    user = oid()
    job = make_job(user)
    await store.jobs.create(job)
    at = T0 + timedelta(seconds=5)
    later = T0 + timedelta(hours=2)
    assert await store.jobs.reschedule(job.job_id, oid(), scheduled_for=later, at=at) is None
    moved = await store.jobs.reschedule(job.job_id, user, scheduled_for=later, at=at)
    assert moved is not None
    assert (moved.scheduled_for, moved.updated_at, moved.prompt) == (later, at, job.prompt)
    edited = await store.jobs.reschedule(
        job.job_id,
        user,
        scheduled_for=later,
        at=at,
        prompt="Rye bread instead",
        content_type="Social Media Caption",
    )
    assert edited is not None
    assert (edited.prompt, edited.content_type) == ("Rye bread instead", "Social Media Caption")
    assert await store.jobs.get(job.job_id) == edited
    # Not due before its new time: a delivery that comes early cannot take it.
    early = T0 + timedelta(seconds=61)
    assert await store.jobs.mark_processing(job.job_id, at=early, attempt=1, due_by=early) is None
    taken = await store.jobs.mark_processing(job.job_id, at=later, attempt=1, due_by=later)
    assert taken is not None and taken.status == JobStatus.processing
    assert await store.jobs.reschedule(job.job_id, user, scheduled_for=later, at=at) is None


async def test_requeue_failed_and_cancelled_jobs_keeps_their_history(store: Store) -> None:
    user = oid()
    failed, cancelled, done = (make_job(user) for _ in range(3))
    for job in (failed, cancelled, done):
        await store.jobs.create(job)
    at = T0 + timedelta(seconds=61)
    for job in (failed, done):
        await store.jobs.mark_processing(job.job_id, at=at, attempt=3)
    await store.jobs.mark_failed(failed.job_id, error="boom", at=at)
    await store.jobs.mark_completed(done.job_id, result=Completion("x", "m"), at=at)
    await store.jobs.cancel(cancelled.job_id, user, at=at)
    again_at = at + timedelta(minutes=5)
    due = again_at + timedelta(seconds=60)
    history = [{"status": "failed", "error": "boom", "attempts": 3}]
    assert (
        await store.jobs.requeue(
            failed.job_id, oid(), scheduled_for=due, at=again_at, history=history
        )
        is None
    )
    requeued = await store.jobs.requeue(
        failed.job_id, user, scheduled_for=due, at=again_at, history=history
    )
    assert requeued is not None
    assert (requeued.status, requeued.scheduled_for, requeued.history) == (
        JobStatus.queued,
        due,
        history,
    )
    assert requeued.error is None and requeued.failed_at is None
    assert requeued.started_at is None and requeued.attempts == 3
    assert not requeued.batch_held  # no batch's turn to wait: due at its time
    assert await store.jobs.get(failed.job_id) == requeued
    back = await store.jobs.requeue(
        cancelled.job_id, user, scheduled_for=due, at=again_at, history=[{"status": "cancelled"}]
    )
    assert back is not None and back.status == JobStatus.queued and back.cancelled_at is None
    assert (
        await store.jobs.requeue(done.job_id, user, scheduled_for=due, at=again_at, history=[])
        is None
    )
    assert (
        await store.jobs.requeue(failed.job_id, user, scheduled_for=due, at=again_at, history=[])
        is None
    )  # queued now


async def test_restore_puts_back_a_queued_snapshot_only(store: Store) -> None:
    user = oid()
    job = make_job(user)
    await store.jobs.create(job)
    at = T0 + timedelta(seconds=5)
    moved = await store.jobs.reschedule(
        job.job_id, user, scheduled_for=T0 + timedelta(hours=1), at=at, prompt="other"
    )
    assert moved is not None
    assert await store.jobs.restore(job)
    assert await store.jobs.get(job.job_id) == job
    await store.jobs.mark_processing(job.job_id, at=T0 + timedelta(hours=2), attempt=1)
    assert not await store.jobs.restore(job)
    current = await store.jobs.get(job.job_id)
    assert current is not None and current.status == JobStatus.processing


# --- accounts: password change, export pages, deletion (issue 21) ------------------------
async def test_set_password_and_delete_user(store: Store) -> None:
    user, other = make_user(), make_user()
    await store.users.create(user)
    await store.users.create(other)
    assert await store.users.set_password(user.user_id, "new-hash")
    got = await store.users.get(user.user_id)
    assert got is not None and got.password_hash == "new-hash"
    assert (await store.users.get(other.user_id)) == other
    assert not await store.users.set_password(oid(), "x")
    assert not await store.users.set_password("not-an-id", "x")
    assert await store.users.delete(user.user_id)
    assert await store.users.get(user.user_id) is None
    assert await store.users.get_by_email(user.email) is None
    assert not await store.users.delete(user.user_id)
    assert not await store.users.delete("not-an-id")
    assert await store.users.get(other.user_id) == other
    # The email is free again.
    await store.users.create(make_user(email=user.email))


async def test_pages_and_deletion_of_a_users_jobs_and_contents(store: Store) -> None:
    alice, bob = oid(), oid()
    # Some created in the same millisecond: the insertion order breaks the tie.
    jobs = [make_job(alice, created_at=T0 + timedelta(seconds=i // 2)) for i in range(7)]
    for job in jobs:
        await store.jobs.create(job)
    bobs_job = make_job(bob)
    await store.jobs.create(bobs_job)
    for job in jobs[:3]:
        await store.contents.create_once(make_content(alice, job.job_id))
    bobs_content, _ = await store.contents.create_once(make_content(bob, bobs_job.job_id))

    seen: list[str] = []
    after = None
    while page := await store.jobs.page_for_user(alice, after=after, limit=3):
        assert len(page) <= 3
        seen += [j.job_id for j in page]
        after = page[-1].job_id
    assert seen == [j.job_id for j in jobs]  # oldest first, each once
    contents = await store.contents.page_for_user(alice, after=None, limit=10)
    assert [c.job_id for c in contents] == [j.job_id for j in jobs[:3]]
    rest = await store.contents.page_for_user(alice, after=contents[0].content_id, limit=10)
    assert [c.content_id for c in rest] == [c.content_id for c in contents[1:]]

    assert await store.contents.delete_for_user(alice) == 3
    assert await store.jobs.delete_for_user(alice) == 7
    assert await store.jobs.page_for_user(alice, after=None, limit=10) == []
    assert await store.contents.page_for_user(alice, after=None, limit=10) == []
    assert await store.jobs.delete_for_user(alice) == 0
    # Bob's are untouched.
    assert await store.jobs.get_for_user(bobs_job.job_id, bob) == bobs_job
    assert await store.contents.get_for_user(bobs_content.content_id, bob) == bobs_content


# --- options, variations, usage and voices (issue 15) --------------------------------------
OPTIONS = {
    "tone": "playful",
    "length": "short",
    "language": "pt-BR",
    "audience": "bakers",
    "keywords": ["crumb", "starter"],
    "model": "fake/model-2",
    "temperature": 0.3,
    "voiceId": "v1",
    "voice": {"voiceId": "v1", "name": "Warm", "description": "kind", "examples": ["Hi!"]},
}


async def test_options_and_parent_come_back_as_written(store: Store) -> None:
    user = oid()
    parent = make_job(user, options=OPTIONS)
    assert await store.jobs.create(parent)
    assert await store.jobs.get(parent.job_id) == parent
    child = make_job(user, parent_job_id=parent.job_id, at=T0 + timedelta(seconds=1))
    other_child = make_job(user, parent_job_id=parent.job_id, at=T0 + timedelta(seconds=2))
    stranger = make_job(oid(), parent_job_id=parent.job_id)  # another user's: never listed
    for job in (other_child, child, stranger):
        assert await store.jobs.create(job)
    assert await store.jobs.get(child.job_id) == child
    ids = await store.jobs.variation_ids(parent.job_id, user, limit=10)
    assert ids == [child.job_id, other_child.job_id]
    assert await store.jobs.variation_ids(parent.job_id, user, limit=1) == [child.job_id]
    assert await store.jobs.variation_ids(child.job_id, user, limit=10) == []


async def test_completion_records_cost_and_a_retry_clears_it(store: Store) -> None:
    user = oid()
    job = make_job(user)
    await store.jobs.create(job)
    assert await store.jobs.mark_processing(job.job_id, at=T0, attempt=1)
    usage = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30, "cost": 0.25}
    assert await store.jobs.mark_completed(job.job_id, result=Completion("t", "m", usage), at=T0)
    done = await store.jobs.get(job.job_id)
    assert done is not None and done.cost == 0.25
    # No cost reported: None, not 0.
    other = make_job(user)
    await store.jobs.create(other)
    assert await store.jobs.mark_processing(other.job_id, at=T0, attempt=1)
    no_cost = Completion("t", "m", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    assert await store.jobs.mark_completed(other.job_id, result=no_cost, at=T0)
    found = await store.jobs.get(other.job_id)
    assert found is not None and found.cost is None


async def test_usage_is_summed_by_the_store_per_group(store: Store) -> None:
    user, stranger = oid(), oid()
    day1, day2 = T0, T0 + timedelta(days=1)

    async def completed(at: datetime, content_type: str, model: str, usage: dict[str, Any]) -> None:
        job = make_job(user, at=at, content_type=content_type)
        await store.jobs.create(job)
        assert await store.jobs.mark_processing(job.job_id, at=at, attempt=1)
        assert await store.jobs.mark_completed(
            job.job_id, result=Completion("t", model, usage), at=at
        )

    u1 = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30, "cost": 0.5}
    u2 = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "cost": 0.25}
    u3 = {"prompt_tokens": 100, "completion_tokens": 200, "total_tokens": 300}  # no cost
    await completed(day1, "Blog Post Outline", "m1", u1)
    await completed(day1, "Product Description", "m2", u2)
    await completed(day2, "Blog Post Outline", "m1", u3)
    failed = make_job(user, at=day2)
    await store.jobs.create(failed)
    assert await store.jobs.mark_failed(failed.job_id, error="x", at=day2)
    await store.jobs.create(make_job(user, at=day2))  # queued
    await store.jobs.create(make_job(user, at=T0 + timedelta(days=40)))  # outside the period
    await store.jobs.create(make_job(stranger, at=day1))  # another user's

    start, end = T0 - timedelta(hours=1), T0 + timedelta(days=30)
    by_day = await store.jobs.usage(user, start=start, end=end, group_by="day")
    assert [r.key for r in by_day] == ["2030-01-02", "2030-01-03"]
    first, second = by_day
    assert (first.jobs, first.by_status["completed"]) == (2, 2)
    assert (first.prompt_tokens, first.completion_tokens, first.total_tokens) == (11, 22, 33)
    assert first.cost == pytest.approx(0.75) and first.priced_jobs == 2
    assert second.jobs == 3
    assert {k: v for k, v in second.by_status.items() if v} == {
        "completed": 1,
        "failed": 1,
        "queued": 1,
    }
    assert (second.total_tokens, second.cost, second.priced_jobs) == (300, 0, 0)

    by_type = await store.jobs.usage(user, start=start, end=end, group_by="contentType")
    assert [(r.key, r.jobs, r.total_tokens) for r in by_type] == [
        ("Blog Post Outline", 4, 330),
        ("Product Description", 1, 3),
    ]
    by_model = await store.jobs.usage(user, start=start, end=end, group_by="model")
    assert [(r.key, r.jobs, r.total_tokens) for r in by_model] == [
        ("m1", 2, 330),
        ("m2", 1, 3),
        (None, 2, 0),  # jobs without an answer, last
    ]
    assert await store.jobs.usage(stranger, start=end, end=end, group_by="day") == []


def make_voice(user_id: str, **kw: Any) -> Voice:
    fields: dict[str, Any] = {
        "voice_id": uuid.uuid4().hex,
        "user_id": user_id,
        "name": "Warm",
        "description": "Kind, plain words",
        "examples": ["Hello there!", "Thanks, friend."],
        "created_at": T0,
        "updated_at": T0,
    }
    return Voice(**{**fields, **kw})


async def test_voices_are_owner_scoped_and_capped(store: Store) -> None:
    user, stranger = oid(), oid()
    first = make_voice(user)
    second = make_voice(user, created_at=T0 + timedelta(seconds=1))
    assert await store.voices.create(first, max_per_user=2)
    assert await store.voices.create(second, max_per_user=2)
    assert not await store.voices.create(make_voice(user), max_per_user=2)  # the cap
    assert await store.voices.create(make_voice(stranger), max_per_user=2)
    assert await store.voices.get_for_user(first.voice_id, user) == first
    assert await store.voices.get_for_user(first.voice_id, stranger) is None
    assert await store.voices.list_for_user(user, limit=10) == [second, first]

    later = T0 + timedelta(minutes=5)
    assert await store.voices.update(first.voice_id, stranger, at=later, name="X") is None
    changed = await store.voices.update(first.voice_id, user, at=later, examples=["New"])
    assert changed is not None
    assert (changed.name, changed.examples, changed.updated_at) == ("Warm", ["New"], later)
    assert await store.voices.get_for_user(first.voice_id, user) == changed

    assert not await store.voices.delete(first.voice_id, stranger)
    assert await store.voices.delete(first.voice_id, user)
    assert not await store.voices.delete(first.voice_id, user)
    assert await store.voices.get_for_user(first.voice_id, user) is None


# --- the content library (issue 16) ----------------------------------------------------------
async def save(store: Store, user: str, **kw: Any) -> Content:
    content, created = await store.contents.create_once(make_content(user, uuid.uuid4().hex, **kw))
    assert created
    return content


async def all_pages(store: Store, user: str, limit: int, **filters: Any) -> list[Content]:
    """Every page of a search, walking the (created_at, content_id) position."""
    seen: list[Content] = []
    before = None
    while page := await store.contents.search(user, limit=limit, before=before, **filters):
        assert len(page) <= limit
        seen += page
        before = (page[-1].created_at, page[-1].content_id)
    return seen


async def test_library_pages_newest_first_filters_and_isolation(store: Store) -> None:
    alice, bob = oid(), oid()
    # Pairs share a millisecond: the content id orders them, the same on every store.
    items = [
        await save(
            store,
            alice,
            created_at=T0 + timedelta(seconds=i // 2),
            title=f"Note {i}",
            body="plain text",
            content_type="Product Description" if i % 3 == 0 else "Blog Post Outline",
            tags=["even"] if i % 2 == 0 else ["odd", "Mixed Case"],
        )
        for i in range(7)
    ]
    await save(store, bob, title="Note for bob", tags=["even"], content_type="Product Description")
    newest_first = sorted(items, key=lambda c: (c.created_at, c.content_id), reverse=True)

    for limit in (1, 3, 7, 50):
        assert await all_pages(store, alice, limit) == newest_first
    first = await store.contents.search(alice, limit=2)
    assert first == newest_first[:2]
    assert first[0].tags in (["even"], ["odd", "Mixed Case"])
    assert first[0].updated_at == first[0].created_at

    products = await all_pages(store, alice, 2, content_type="Product Description")
    assert products == [c for c in newest_first if c.content_type == "Product Description"]
    odd = await all_pages(store, alice, 2, tag="odd")
    assert odd == [c for c in newest_first if "odd" in c.tags] and len(odd) == 3
    assert await store.contents.search(alice, limit=10, tag="Mixed Case") == odd
    assert await store.contents.search(alice, limit=10, tag="mixed case") == []  # exact
    assert await store.contents.search(alice, limit=10, tag="od") == []
    both = await store.contents.search(
        alice, limit=10, tag="even", content_type="Product Description"
    )
    assert both == [
        c for c in newest_first if c.content_type == "Product Description" and "even" in c.tags
    ]
    # A position before everything, or from another user's row, shows only alice's rows.
    assert await store.contents.search(alice, limit=10, before=(T0, "")) == []
    late = (T0 + timedelta(days=1), "z")
    assert await store.contents.search(alice, limit=10, before=late) == newest_first
    assert all(c.user_id == alice for c in await all_pages(store, alice, 3, tag="even"))
    assert await store.contents.search(oid(), limit=10) == []


async def test_library_full_text_search(store: Store) -> None:
    alice, bob = oid(), oid()
    bread = await save(
        store, alice, title="Sourdough basics", body="Feed the starter daily.",
        created_at=T0,
    )  # fmt: skip
    cake = await save(
        store, alice, title="Carrot cake", body="A moist cake, a SOURDOUGH twist.",
        created_at=T0 + timedelta(seconds=1), tags=["dessert"],
    )  # fmt: skip
    salad = await save(
        store, alice, title="Summer salad", body="Tomatoes, basil and olive oil.",
        created_at=T0 + timedelta(seconds=2), content_type="Social Media Caption",
    )  # fmt: skip
    await save(store, bob, title="Sourdough for bob", body="starter tomatoes cake")

    async def ids(query: str, **kw: Any) -> list[str]:
        found = await store.contents.search(alice, limit=10, query=query, **kw)
        assert all(c.user_id == alice for c in found)
        return [c.content_id for c in found]

    # Title or body, any case, newest first.
    assert await ids("sourdough") == [cake.content_id, bread.content_id]
    assert await ids("SourDough") == [cake.content_id, bread.content_id]
    assert await ids("starter") == [bread.content_id]
    # Every word must be there (in either field).
    assert await ids("sourdough cake") == [cake.content_id]
    assert await ids("sourdough tomatoes") == []
    assert await ids("cake sourdough twist") == [cake.content_id]
    # Whole words: no prefixes, no stems.
    assert await ids("sourd") == []
    assert await ids("tomato") == []
    # Filters and positions combine with the search.
    assert await ids("sourdough", tag="dessert") == [cake.content_id]
    assert await ids("sourdough", content_type="Social Media Caption") == []
    assert await ids("basil", content_type="Social Media Caption") == [salad.content_id]
    position = (cake.created_at, cake.content_id)
    assert await ids("sourdough", before=position) == [bread.content_id]
    page = await store.contents.search(alice, limit=1, query="sourdough")
    assert [c.content_id for c in page] == [cake.content_id]
    # Punctuation only separates words.
    assert await ids("sourdough, starter!") == [bread.content_id]
    assert await ids("  ") == []


async def test_library_search_from_a_store_that_did_not_make_the_schema(
    backend: Backend,
) -> None:
    """`smartgen api` processes open their store without `init` (the schema is made once,
    before they start): their searches work as the initialising store's do, on a server
    with text indexes or without (MongoDB-compatible ones fall back to patterns)."""
    first = backend.open()
    await first.init()
    alice = oid()
    bread = await save(first, alice, title="Sourdough basics", body="Feed the starter.")
    later = backend.open()  # no init: as an API process
    found = await later.contents.search(alice, limit=5, query="sourdough starter")
    assert [c.content_id for c in found] == [bread.content_id]
    assert await later.contents.search(alice, limit=5, query="rye") == []


HOSTILE_QUERIES = [
    '"', '""', '"sourdough', 'sourdough"', "sourdough*", "*", "-sourdough", "sourdough -starter",
    "NEAR(sourdough starter)", "sourdough NEAR starter", "sourdough OR cake", "NOT sourdough",
    "AND", "title:sourdough", "body : x", "^sourdough", "{title body}: sourdough", "(", ")",
    "'; DROP TABLE contents; --", "\\", "%", "_", "sourdough\x00", "\x00", "$where", "{$ne: 1}",
    ".*", "[a-z]+", "(?i)sourdough", "sourdough & starter | !x", "sourdough:*", "<->", "!!",
    "😀 sourdough", "ß" * 500, "word " * 5000, "'", "`", "+sourdough", "@@", "::",
]  # fmt: skip


async def test_library_search_with_hostile_queries(store: Store) -> None:
    alice, bob = oid(), oid()
    bread = await save(store, alice, title="Sourdough basics", body="Feed the starter daily.")
    await save(store, bob, title="Sourdough for bob", body="starter")
    for query in HOSTILE_QUERIES:
        found = await store.contents.search(alice, limit=5, query=query)
        assert all(c.user_id == alice for c in found), query
    # Operators are words or nothing, never syntax: these look for "sourdough" (and the
    # words beside it), never for a prefix, a negation or an alternative.
    for query in ['"sourdough', "sourdough*", "-sourdough", "+sourdough", "sourdough:*"]:
        found = await store.contents.search(alice, limit=5, query=query)
        assert [c.content_id for c in found] == [bread.content_id], query
    assert await store.contents.search(alice, limit=5, query="sourdough -starter") == [bread]
    assert await store.contents.search(alice, limit=5, query="sourdough OR cake") == []
    assert await store.contents.search(alice, limit=5, query="sourdough NEAR starter") == []


async def test_library_edit_and_delete_are_owner_scoped_and_searchable(store: Store) -> None:
    alice, bob = oid(), oid()
    item = await save(store, alice, title="Sourdough basics", body="Feed the starter daily.")
    later = T0 + timedelta(hours=1)

    assert await store.contents.update(item.content_id, bob, at=later, title="Mine now") is None
    assert await store.contents.update("no-such-content", alice, at=later, title="x") is None
    edited = await store.contents.update(
        item.content_id, alice, at=later, title="Rye loaf", tags=["bread", "Weekend"]
    )
    assert edited is not None
    assert (edited.title, edited.body, edited.tags) == (
        "Rye loaf", "Feed the starter daily.", ["bread", "Weekend"],
    )  # fmt: skip
    assert (edited.created_at, edited.updated_at) == (item.created_at, later)
    assert await store.contents.get_for_user(item.content_id, alice) == edited
    # The search index follows the edit.
    assert await store.contents.search(alice, limit=5, query="rye") == [edited]
    assert await store.contents.search(alice, limit=5, query="sourdough") == []
    assert await store.contents.search(alice, limit=5, tag="Weekend") == [edited]
    body_only = await store.contents.update(item.content_id, alice, at=later, body="Caraway seeds")
    assert body_only is not None and (body_only.title, body_only.tags) == ("Rye loaf", edited.tags)
    assert await store.contents.search(alice, limit=5, query="caraway") == [body_only]
    assert await store.contents.search(alice, limit=5, query="starter") == []
    cleared = await store.contents.update(item.content_id, alice, at=later, tags=[])
    assert cleared is not None and cleared.tags == []
    pages = await store.contents.page_for_user(alice, after=None, limit=5)
    assert pages == [cleared]

    assert not await store.contents.delete(item.content_id, bob)
    assert await store.contents.get_for_user(item.content_id, alice) == cleared
    assert await store.contents.delete(item.content_id, alice)
    assert not await store.contents.delete(item.content_id, alice)
    assert await store.contents.get_for_user(item.content_id, alice) is None
    assert await store.contents.search(alice, limit=5, query="caraway") == []
    # The job may be saved again once its content is gone.
    again, created = await store.contents.create_once(make_content(alice, item.job_id))
    assert created and await store.contents.search(alice, limit=5, query="sourdough") == [again]


async def test_feedback_on_completed_jobs_only_and_in_usage(store: Store) -> None:
    user, stranger = oid(), oid()
    done = make_job(user, content_type="Product Description")
    other = make_job(user, content_type="Product Description")
    queued = make_job(user)
    for job in (done, other, queued):
        await store.jobs.create(job)
    for job in (done, other):
        assert await store.jobs.mark_processing(job.job_id, at=T0, attempt=1)
        assert await store.jobs.mark_completed(job.job_id, result=Completion("t", "m"), at=T0)
    at = T0 + timedelta(minutes=5)

    assert (
        await store.jobs.set_feedback(queued.job_id, user, rating="like", comment=None, at=at)
        is None
    )
    assert (
        await store.jobs.set_feedback(done.job_id, stranger, rating="like", comment=None, at=at)
        is None
    )
    assert (
        await store.jobs.set_feedback("no-such-job", user, rating="like", comment=None, at=at)
        is None
    )
    rated = await store.jobs.set_feedback(done.job_id, user, rating="like", comment="Great", at=at)
    assert rated is not None
    assert (rated.feedback_rating, rated.feedback_comment, rated.feedback_at) == (
        "like",
        "Great",
        at,
    )
    assert rated.updated_at == T0  # a rating is not a change of the job's state
    assert await store.jobs.get_for_user(done.job_id, user) == rated
    later = at + timedelta(minutes=1)
    changed = await store.jobs.set_feedback(
        done.job_id, user, rating="dislike", comment=None, at=later
    )
    assert changed is not None
    assert (changed.feedback_rating, changed.feedback_comment, changed.feedback_at) == (
        "dislike", None, later,
    )  # fmt: skip
    assert await store.jobs.set_feedback(other.job_id, user, rating="like", comment=None, at=at)
    listed = {j.job_id: j.feedback_rating for j in await store.jobs.list_for_user(user, limit=5)}
    assert listed == {done.job_id: "dislike", other.job_id: "like", queued.job_id: None}

    start, end = T0 - timedelta(days=1), T0 + timedelta(days=1)
    rows = await store.jobs.usage(user, start=start, end=end, group_by="contentType")
    assert [(r.key, r.jobs, r.liked, r.disliked) for r in rows] == [
        ("Blog Post Outline", 1, 0, 0),
        ("Product Description", 2, 1, 1),
    ]

    assert not await store.jobs.clear_feedback(done.job_id, stranger)
    assert await store.jobs.clear_feedback(done.job_id, user)
    assert not await store.jobs.clear_feedback(done.job_id, user)
    cleared = await store.jobs.get(done.job_id)
    assert cleared is not None
    assert (cleared.feedback_rating, cleared.feedback_comment, cleared.feedback_at) == (None,) * 3
    rows = await store.jobs.usage(user, start=start, end=end, group_by="contentType")
    assert [(r.key, r.liked, r.disliked) for r in rows][-1] == ("Product Description", 1, 0)


@pytest.mark.parametrize("backend_spec", ["sqlite"], indirect=True)
async def test_sqlite_search_index_stays_in_step_with_its_table(backend: Backend) -> None:
    """Every write path keeps the FTS5 table equal to the contents (FTS5's own check
    against its external table fails otherwise)."""
    store = backend.open()
    await store.init()
    alice, bob = oid(), oid()
    kept = await save(store, alice, title="Sourdough", body="starter")
    gone = await save(store, alice, title="Rye", body="caraway")
    await save(store, bob, title="Spelt", body="flour")
    assert await store.contents.update(kept.content_id, alice, at=T0, title="Pumpernickel")
    assert await store.contents.update(kept.content_id, alice, at=T0, tags=["dark"])
    assert await store.contents.delete(gone.content_id, alice)
    assert await store.contents.delete_for_user(bob) == 1
    await raw_sql(
        backend, "INSERT INTO contents_fts (contents_fts, rank) VALUES ('integrity-check', 1)"
    )
    rows = await raw_sql(
        backend, "SELECT rowid FROM contents_fts WHERE contents_fts MATCH 'pumpernickel'"
    )
    assert len(rows) == 1
    for word in ("sourdough", "caraway", "spelt"):
        assert (
            await raw_sql(
                backend, f"SELECT rowid FROM contents_fts WHERE contents_fts MATCH '{word}'"
            )
            == []
        )


def make_key(user_id: str, **kw: Any) -> ApiKey:
    fields: dict[str, Any] = {
        "key_id": str(uuid.uuid4()),
        "user_id": user_id,
        "name": "CMS import",
        "prefix": "AbCdEfGh",
        "key_hash": uuid.uuid4().hex + uuid.uuid4().hex,
        "scopes": ["generate", "read"],
        "created_at": T0,
    }
    return ApiKey(**{**fields, **kw})


async def test_api_keys_are_found_by_hash_owner_scoped_and_capped(store: Store) -> None:
    user, stranger = oid(), oid()
    first = make_key(user, expires_at=T0 + timedelta(days=30))
    second = make_key(user, created_at=T0 + timedelta(seconds=1), scopes=["webhooks"])
    assert await store.api_keys.create(first, max_per_user=2)
    assert await store.api_keys.create(second, max_per_user=2)
    assert not await store.api_keys.create(make_key(user), max_per_user=2)  # the cap
    theirs = make_key(stranger)
    assert await store.api_keys.create(theirs, max_per_user=2)
    with pytest.raises(Exception):  # noqa: B017 - a hash is unique, whatever the driver's error
        await store.api_keys.create(make_key(stranger, key_hash=first.key_hash), max_per_user=9)

    assert await store.api_keys.get_by_hash(first.key_hash) == first
    assert await store.api_keys.get_by_hash("0" * 64) is None
    assert await store.api_keys.list_for_user(user, limit=10) == [second, first]
    assert await store.api_keys.list_for_user(user, limit=1) == [second]

    used = T0 + timedelta(minutes=3)
    await store.api_keys.touch(first.key_id, at=used)
    touched = await store.api_keys.get_by_hash(first.key_hash)
    assert touched is not None and touched.last_used_at == used

    assert not await store.api_keys.delete(first.key_id, stranger)
    assert await store.api_keys.delete(first.key_id, user)
    assert not await store.api_keys.delete(first.key_id, user)
    assert await store.api_keys.get_by_hash(first.key_hash) is None
    assert await store.api_keys.delete_for_user(user) == 1
    assert await store.api_keys.list_for_user(user, limit=10) == []
    assert await store.api_keys.list_for_user(stranger, limit=10) == [theirs]


def make_hook(user_id: str, **kw: Any) -> WebhookEndpoint:
    fields: dict[str, Any] = {
        "webhook_id": str(uuid.uuid4()),
        "user_id": user_id,
        "url": "https://hooks.example.com/in",
        "events": ["job.completed", "job.failed"],
        "description": "CMS",
        "secret": "whsec_" + uuid.uuid4().hex,
        "enabled": True,
        "created_at": T0,
        "updated_at": T0,
    }
    return WebhookEndpoint(**{**fields, **kw})


async def test_webhook_endpoints_are_owner_scoped_capped_and_track_failures(
    store: Store,
) -> None:
    hooks = store.webhooks
    user, stranger = oid(), oid()
    first = make_hook(user)
    second = make_hook(user, created_at=T0 + timedelta(seconds=1), description="")
    assert await hooks.create(first, max_per_user=2)
    assert await hooks.create(second, max_per_user=2)
    assert not await hooks.create(make_hook(user), max_per_user=2)  # the cap
    theirs = make_hook(stranger)
    assert await hooks.create(theirs, max_per_user=2)
    assert await hooks.get(first.webhook_id) == first
    assert await hooks.get_for_user(first.webhook_id, user) == first
    assert await hooks.get_for_user(first.webhook_id, stranger) is None
    assert await hooks.list_for_user(user, limit=10) == [second, first]

    later = T0 + timedelta(minutes=1)
    assert await hooks.update(first.webhook_id, stranger, at=later, url="https://x") is None
    changed = await hooks.update(
        first.webhook_id, user, at=later, events=["job.cancelled"], description="New"
    )
    assert changed is not None
    assert (changed.url, changed.events, changed.description, changed.enabled) == (
        first.url, ["job.cancelled"], "New", True,
    )  # fmt: skip
    assert changed.updated_at == later

    # Failures: the first one marks the start of the run, a success ends it.
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    failing = await hooks.record_outcome(first.webhook_id, ok=False, at=t1)
    assert failing is not None and failing.failing_since == t1
    failing = await hooks.record_outcome(first.webhook_id, ok=False, at=t2)
    assert failing is not None and failing.failing_since == t1
    healthy = await hooks.record_outcome(first.webhook_id, ok=True, at=t2)
    assert healthy is not None and healthy.failing_since is None
    await hooks.record_outcome(first.webhook_id, ok=False, at=t2)
    assert await hooks.disable(first.webhook_id, at=t2)
    assert not await hooks.disable(first.webhook_id, at=t2)  # once
    disabled = await hooks.get(first.webhook_id)
    assert disabled is not None and not disabled.enabled and disabled.failing_since == t2
    enabled = await hooks.update(first.webhook_id, user, at=t2, enabled=True)
    assert enabled is not None and enabled.enabled and enabled.failing_since is None
    assert await hooks.record_outcome("gone", ok=False, at=t2) is None

    assert not await hooks.delete(first.webhook_id, stranger)
    assert await hooks.delete(first.webhook_id, user)
    assert not await hooks.delete(first.webhook_id, user)
    assert await hooks.get(first.webhook_id) is None


async def test_webhook_secret_deliveries_and_attempts(store: Store) -> None:
    hooks = store.webhooks
    user, stranger = oid(), oid()
    assert await hooks.get_secret(user) is None
    assert await hooks.create_secret(user, "whsec_one", at=T0)
    assert not await hooks.create_secret(user, "whsec_two", at=T0)
    assert await hooks.get_secret(user) == "whsec_one"
    await hooks.replace_secret(user, "whsec_three", at=T0)
    await hooks.replace_secret(stranger, "whsec_theirs", at=T0)
    assert await hooks.get_secret(user) == "whsec_three"

    endpoint = make_hook(user)
    assert await hooks.create(endpoint, max_per_user=5)
    delivery = WebhookDelivery(
        delivery_id=str(uuid.uuid4()),
        user_id=user,
        webhook_id=endpoint.webhook_id,
        url=endpoint.url,
        event="job.completed",
        payload={"jobId": "j1", "nested": {"n": 1}},
        status="pending",
        attempts=0,
        created_at=T0,
        updated_at=T0,
        message_id="msg_1",
        next_attempt_at=T0,
    )
    job_url = replace(delivery, delivery_id=str(uuid.uuid4()), webhook_id=None, url="https://j")
    assert await hooks.create_delivery(delivery)
    assert not await hooks.create_delivery(delivery)  # the same id: once
    assert await hooks.create_delivery(job_url)
    assert await hooks.get_delivery(delivery.delivery_id) == delivery
    assert await hooks.get_delivery_for_user(job_url.delivery_id, user) == job_url
    assert await hooks.get_delivery_for_user(delivery.delivery_id, stranger) is None
    due = await hooks.list_due_deliveries(T0 + timedelta(seconds=1), limit=10)
    assert {d.delivery_id for d in due} == {delivery.delivery_id, job_url.delivery_id}
    assert await hooks.list_due_deliveries(T0, limit=10) == []

    retry_at = T0 + timedelta(seconds=5)
    await hooks.update_delivery(
        delivery.delivery_id, status="pending", attempts=1, at=T0, next_attempt_at=retry_at
    )
    await hooks.update_delivery(
        job_url.delivery_id, status="succeeded", attempts=1, at=T0, next_attempt_at=None
    )
    due = await hooks.list_due_deliveries(T0 + timedelta(seconds=6), limit=10)
    assert [(d.delivery_id, d.attempts, d.next_attempt_at) for d in due] == [
        (delivery.delivery_id, 1, retry_at)
    ]

    first = WebhookAttempt(
        attempt_id=str(uuid.uuid4()),
        delivery_id=delivery.delivery_id,
        user_id=user,
        webhook_id=endpoint.webhook_id,
        event="job.completed",
        attempt=1,
        status="failed",
        created_at=T0,
        response_code=503,
        response_body="busy",
        duration_ms=12,
        next_attempt_at=retry_at,
    )
    second = replace(
        first, attempt_id=str(uuid.uuid4()), attempt=2, status="succeeded",
        created_at=retry_at, response_code=200, response_body="", next_attempt_at=None,
    )  # fmt: skip
    refused = replace(
        first, attempt_id=str(uuid.uuid4()), attempt=3, created_at=retry_at,
        response_code=None, response_body=None, duration_ms=None, error="refused",
    )  # fmt: skip
    for attempt in (first, second, refused):
        await hooks.add_attempt(attempt)
    assert await hooks.list_attempts(endpoint.webhook_id, user, limit=10) == [
        refused, second, first,
    ]  # fmt: skip
    assert await hooks.list_attempts(endpoint.webhook_id, user, limit=1) == [refused]
    assert await hooks.list_attempts(endpoint.webhook_id, stranger, limit=10) == []

    assert await hooks.delete_for_user(user) == 1
    assert await hooks.get_secret(user) is None
    assert await hooks.get_delivery(delivery.delivery_id) is None
    assert await hooks.list_attempts(endpoint.webhook_id, user, limit=10) == []
    assert await hooks.get_secret(stranger) == "whsec_theirs"


# --- batches ------------------------------------------------------------------------------
def make_batch(user_id: str, jobs: int, **kw: Any) -> tuple[Batch, list[Job]]:
    batch_id = str(uuid.uuid4())
    at = kw.pop("at", T0)
    batch = Batch(
        batch_id=batch_id,
        user_id=user_id,
        status="running",
        total=jobs + 1,
        accepted=jobs,
        rejected=[{"row": jobs + 1, "error": "prompt: field required"}],
        created_at=at,
        updated_at=at,
        webhook_url="https://example.com/hook",
        **kw,
    )
    made = [
        make_job(user_id, at=at, batch_id=batch_id, batch_row=row, batch_held=True)
        for row in range(1, jobs + 1)
    ]
    return batch, made


async def test_batches_are_stored_listed_and_owner_scoped(store: Store) -> None:
    owner, other = oid(), oid()
    first, first_jobs = make_batch(owner, 3, at=T0)
    second, _ = make_batch(owner, 0, at=T0 + timedelta(seconds=1))
    await store.batches.create(first, first_jobs)
    await store.batches.create(second, [])
    assert await store.batches.get(first.batch_id) == first
    assert await store.batches.get_for_user(first.batch_id, owner) == first
    assert await store.batches.get_for_user(first.batch_id, other) is None
    assert await store.batches.get_for_user(str(uuid.uuid4()), owner) is None
    listed = await store.batches.list_for_user(owner, before=None, limit=10)
    assert [b.batch_id for b in listed] == [second.batch_id, first.batch_id]
    older = await store.batches.list_for_user(owner, before=second.batch_id, limit=10)
    assert [b.batch_id for b in older] == [first.batch_id]
    assert await store.batches.list_for_user(owner, before=first.batch_id, limit=10) == []
    assert await store.batches.list_for_user(other, before=first.batch_id, limit=10) == []
    assert await store.batches.list_for_user(other, before=None, limit=10) == []
    # Its jobs are ordinary jobs, with their batch and row.
    job = await store.jobs.get_for_user(first_jobs[1].job_id, owner)
    assert job is not None
    assert (job.batch_id, job.batch_row, job.batch_held) == (first.batch_id, 2, True)
    assert len(await store.jobs.list_for_user(owner, limit=10)) == 3
    # Waiting jobs are neither counted against the cap nor due for the reconciler.
    assert await store.jobs.count_unfinished(owner) == 0
    assert await store.jobs.create(make_job(owner), max_unfinished=1)
    assert await store.jobs.count_unfinished(owner) == 1
    due = await store.jobs.list_unfinished_due(T0 + timedelta(days=1), limit=100)
    assert all(j.batch_id is None for j in due)
    running = await store.batches.list_running(limit=10)
    assert {b.batch_id for b in running} == {first.batch_id, second.batch_id}
    assert await store.batches.delete_for_user(owner) == 2
    assert await store.batches.get(first.batch_id) is None


async def test_batch_counts_claims_pages_and_endings(store: Store) -> None:
    owner = oid()
    batch, jobs = make_batch(owner, 6)
    await store.batches.create(batch, jobs)
    counts = await store.batches.counts(batch.batch_id)
    assert (counts.by_status, counts.waiting, counts.in_queue) == ({"queued": 6}, 6, 0)
    # Claimed lowest row first; a claimed job is queued, no longer waiting, and due.
    claimed = [await store.batches.claim_next(batch.batch_id, at=T0) for _ in range(3)]
    assert [j.batch_row for j in claimed if j is not None] == [1, 2, 3]
    assert all(j is not None and not j.batch_held for j in claimed)
    due = await store.jobs.list_unfinished_due(T0 + timedelta(days=1), limit=100)
    assert sorted(j.batch_row or 0 for j in due) == [1, 2, 3]
    # Row 1 completes (with a cost), row 2 fails, row 3 runs.
    first, second, third = (j.job_id for j in claimed if j is not None)
    assert await store.jobs.mark_processing(first, at=T0, attempt=1, owner="m")
    result = Completion("# A", "fake/model-1", {"total_tokens": 5, "cost": 0.25})
    assert await store.jobs.mark_completed(first, result=result, at=T0)
    assert await store.jobs.mark_failed(second, error="boom", at=T0)
    assert await store.jobs.mark_processing(third, at=T0, attempt=1, owner="m")
    counts = await store.batches.counts(batch.batch_id)
    assert counts.by_status == {"completed": 1, "failed": 1, "processing": 1, "queued": 3}
    assert (counts.waiting, counts.in_queue, counts.finished) == (3, 1, 2)
    assert counts.cost == pytest.approx(0.25)
    # Pages in row order, optionally by status.
    page = await store.batches.jobs_page(batch.batch_id, after_row=0, limit=4)
    assert [j.batch_row for j in page] == [1, 2, 3, 4]
    rest = await store.batches.jobs_page(batch.batch_id, after_row=4, limit=4)
    assert [j.batch_row for j in rest] == [5, 6]
    failed = await store.batches.jobs_page(
        batch.batch_id, after_row=0, limit=10, status=JobStatus.failed
    )
    assert [j.job_id for j in failed] == [second]
    # A failed job waits its turn again when queued again as a batch's.
    again = await store.jobs.requeue(
        second, owner, scheduled_for=T0, at=T0, history=[{"status": "failed"}], held=True
    )
    assert again is not None and again.batch_held and again.status == JobStatus.queued
    # "Run now" on a waiting job lets it out of turn.
    out = await store.jobs.reschedule(jobs[5].job_id, owner, scheduled_for=T0, at=T0, release=True)
    assert out is not None and not out.batch_held
    # Cancelling what waits: rows 2 (waiting again), 4 and 5.
    cancelled = await store.batches.cancel_waiting(batch.batch_id, at=T0)
    assert sorted(cancelled) == sorted([second, jobs[3].job_id, jobs[4].job_id])
    counts = await store.batches.counts(batch.batch_id)
    assert counts.waiting == 0 and counts.by_status["cancelled"] == 3
    assert await store.batches.claim_next(batch.batch_id, at=T0) is None
    # A batch ends once; reopened, it may end again.
    ended = await store.batches.finish(batch.batch_id, status="completed", at=T0)
    assert ended is not None and ended.status == "completed" and ended.completed_at == T0
    assert await store.batches.finish(batch.batch_id, status="cancelled", at=T0) is None
    assert await store.batches.list_running(limit=10) == []
    assert await store.batches.reopen(batch.batch_id, at=T0)
    assert not await store.batches.reopen(batch.batch_id, at=T0)
    reopened = await store.batches.get(batch.batch_id)
    assert reopened is not None and reopened.status == "running"
    assert reopened.completed_at is None


async def test_batch_lock_has_one_holder_until_it_runs_out(store: Store) -> None:
    batch, _ = make_batch(oid(), 0)
    await store.batches.create(batch, [])
    until = T0 + timedelta(seconds=30)
    assert await store.batches.lock(batch.batch_id, owner="a", until=until, at=T0)
    assert not await store.batches.lock(batch.batch_id, owner="b", until=until, at=T0)
    assert await store.batches.lock(batch.batch_id, owner="a", until=until, at=T0)  # its own
    await store.batches.unlock(batch.batch_id, owner="b")  # not b's: nothing happens
    assert not await store.batches.lock(batch.batch_id, owner="b", until=until, at=T0)
    # Run out: taken over.
    later = until + timedelta(seconds=1)
    assert await store.batches.lock(batch.batch_id, owner="b", until=later, at=later)
    await store.batches.unlock(batch.batch_id, owner="b")
    assert await store.batches.lock(batch.batch_id, owner="c", until=until, at=T0)
    assert not await store.batches.lock(str(uuid.uuid4()), owner="c", until=until, at=T0)


async def test_batch_lock_is_renewed_only_while_still_its_holders(store: Store) -> None:
    """A filler that stalled keeps its lock only if no one took it over or gave it back
    meanwhile, however long ago it ran out."""
    batch, _ = make_batch(oid(), 0)
    await store.batches.create(batch, [])
    until = T0 + timedelta(seconds=30)
    assert not await store.batches.renew(batch.batch_id, owner="a", until=until)  # unheld
    assert await store.batches.lock(batch.batch_id, owner="a", until=until, at=T0)
    much_later = T0 + timedelta(minutes=5)  # ran out long ago; no one else came
    assert await store.batches.renew(batch.batch_id, owner="a", until=much_later)
    got = await store.batches.get(batch.batch_id)
    assert got is not None and (got.lock_owner, got.lock_until) == ("a", much_later)
    assert not await store.batches.renew(batch.batch_id, owner="b", until=much_later)
    # Taken over once it ran out: the first holder's renewal fails, and changes nothing.
    after = much_later + timedelta(seconds=1)
    assert await store.batches.lock(batch.batch_id, owner="b", until=after, at=after)
    assert not await store.batches.renew(batch.batch_id, owner="a", until=after)
    got = await store.batches.get(batch.batch_id)
    assert got is not None and (got.lock_owner, got.lock_until) == ("b", after)
    # Given back: renewing is not taking it again.
    await store.batches.unlock(batch.batch_id, owner="b")
    assert not await store.batches.renew(batch.batch_id, owner="b", until=after)
    got = await store.batches.get(batch.batch_id)
    assert got is not None and (got.lock_owner, got.lock_until) == (None, None)
    assert not await store.batches.renew(str(uuid.uuid4()), owner="b", until=after)


async def test_batch_rows_are_claimed_once_under_concurrency(
    backend: Backend, store: Store
) -> None:
    batch, jobs = make_batch(oid(), 30)
    await store.batches.create(batch, jobs)
    other = backend.open()  # a second process's store: its own connections
    await other.init()

    async def claim(on: Store) -> str | None:
        job = await on.batches.claim_next(batch.batch_id, at=T0)
        return None if job is None else job.job_id

    first = await asyncio.gather(*(claim(store if i % 2 else other) for i in range(40)))
    claimed = [job_id for job_id in first if job_id is not None]
    assert len(claimed) == len(set(claimed))
    # A claim that lost a race may come back empty while rows wait; claiming on drains them.
    while (job_id := await claim(store)) is not None:
        claimed.append(job_id)
    assert sorted(claimed) == sorted(j.job_id for j in jobs)
    counts = await store.batches.counts(batch.batch_id)
    assert (counts.waiting, counts.in_queue) == (0, 30)
