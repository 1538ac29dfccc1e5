"""The reconciler's decision table (generation/reconcile.py), one row a test, over a real
store (the MongoDB wire server) and a stand-in for the queue whose states the test sets.
The same decisions over real processes, real Redis and a FLUSHALL are in test_faults.py."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Any

import pytest

from smartgen.config import Settings
from smartgen.errors import StoreUnavailable
from smartgen.generation.reconcile import EXPIRED, LOST, Reconciler
from smartgen.generation.service import queue_message
from smartgen.kit.times import utcnow
from smartgen.models import Job, JobStatus
from smartgen.store.base import Store


class QueueStates:
    """A stand-in for the queue: each job's state as the test sets it, and what the
    reconciler asked of it (the real queue's answers are tested in test_worker.py)."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.enqueued: list[tuple[str, dict[str, Any], int]] = []
        self.removed: list[str] = []
        self.message_ids: list[str | None] = []

    async def state(self, job_id: str) -> str:
        return self.states.get(job_id, "unknown")

    async def remove(self, job_id: str) -> bool:
        self.removed.append(job_id)
        return self.states.pop(job_id, None) is not None

    async def enqueue(
        self, *, job_id: str, data: dict[str, Any], delay_ms: int, message_id: str | None = None
    ) -> None:
        self.enqueued.append((job_id, data, delay_ms))
        self.message_ids.append(message_id)
        self.states[job_id] = "waiting"


class Announcements:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    async def job_changed(self, job: Job, *, settled: bool = False, repeat: bool = False) -> None:
        self.jobs.append(job)

    async def job_progress(self, job: Job, *, delta: str, length: int, reset: bool) -> None:
        raise AssertionError("the reconciler writes no text")


class Reservations:
    """A stand-in for the budgets: the reservations given back."""

    def __init__(self) -> None:
        self.released: list[str] = []

    async def release(self, job_id: str) -> None:
        self.released.append(job_id)


def reconciler(
    store: Store,
    settings: Settings,
    queue: QueueStates,
    notes: Announcements,
    budgets: Reservations | None = None,
    **changes: Any,
) -> Reconciler:
    s = settings.model_copy(
        update={
            "reconcile_grace_seconds": 30.0,
            "reconcile_max_age_seconds": 3600.0,
            **changes,
        }
    )
    return Reconciler(
        store=store,
        queue=queue,  # type: ignore[arg-type]
        notifier=notes,
        settings=s,
        budgets=budgets,  # type: ignore[arg-type]
    )


async def add_job(store: Store, *, due_ago: float, status: JobStatus = JobStatus.queued) -> Job:
    now = utcnow()
    job = Job(
        job_id=str(uuid.uuid4()),
        user_id=uuid.uuid4().hex[:24],
        status=JobStatus.queued,
        prompt="How to bake bread",
        content_type="Blog Post Outline",
        scheduled_for=now - timedelta(seconds=due_ago),
        created_at=now - timedelta(seconds=due_ago + 1),
        updated_at=now - timedelta(seconds=due_ago + 1),
    )
    await store.jobs.create(job)
    if status == JobStatus.processing:
        assert await store.jobs.mark_processing(job.job_id, at=now, attempt=1)
    got = await store.jobs.get(job.job_id)
    assert got is not None
    return got


@pytest.mark.parametrize("state", ["delayed", "waiting", "active", "prioritized"])
async def test_a_job_with_a_live_queue_entry_is_left_alone(
    store: Store, settings: Settings, state: str
) -> None:
    queue, notes = QueueStates(), Announcements()
    job = await add_job(store, due_ago=120)
    queue.states[job.job_id] = state
    report = await reconciler(store, settings, queue, notes).run_once()
    assert (report.checked, report.requeued, report.failed) == (1, 0, 0)
    assert queue.enqueued == [] and queue.removed == [] and notes.jobs == []
    assert await store.jobs.get(job.job_id) == job


@pytest.mark.parametrize("status", [JobStatus.queued, JobStatus.processing])
async def test_a_job_without_a_queue_entry_is_queued_again_to_run_now(
    store: Store, settings: Settings, status: JobStatus
) -> None:
    queue, notes = QueueStates(), Announcements()
    job = await add_job(store, due_ago=120, status=status)
    report = await reconciler(store, settings, queue, notes).run_once()
    assert (report.checked, report.requeued, report.failed) == (1, 1, 0)
    assert queue.enqueued == [(job.job_id, queue_message(job), 0)]
    assert queue.removed == [] and notes.jobs == []
    assert await store.jobs.get(job.job_id) == job  # the store is not touched


async def test_a_completed_entry_the_store_disagrees_with_is_removed_and_queued_again(
    store: Store, settings: Settings
) -> None:
    queue, notes = QueueStates(), Announcements()
    job = await add_job(store, due_ago=120)
    queue.states[job.job_id] = "completed"
    report = await reconciler(store, settings, queue, notes).run_once()
    assert (report.checked, report.requeued, report.failed) == (1, 1, 0)
    assert queue.removed == [job.job_id]
    assert queue.enqueued == [(job.job_id, queue_message(job), 0)]


async def test_a_failed_entry_fails_the_job_in_the_store_and_announces_it(
    store: Store, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smartgen.generation.reconcile")
    queue, notes = QueueStates(), Announcements()
    job = await add_job(store, due_ago=120, status=JobStatus.processing)
    queue.states[job.job_id] = "failed"
    report = await reconciler(store, settings, queue, notes).run_once()
    assert (report.checked, report.requeued, report.failed) == (1, 0, 1)
    stored = await store.jobs.get(job.job_id)
    assert stored is not None and stored.status == JobStatus.failed and stored.error == LOST
    [announced] = notes.jobs
    assert (announced.job_id, announced.status, announced.error) == (
        job.job_id,
        JobStatus.failed,
        LOST,
    )
    assert announced.failed_at is not None and announced.updated_at == announced.failed_at
    assert stored.failed_at is not None
    assert abs(stored.failed_at - announced.failed_at) < timedelta(milliseconds=1)
    assert queue.enqueued == []
    assert f"job {job.job_id} failed by the reconciler: {LOST}" in caplog.messages


async def test_a_job_past_the_maximum_age_is_failed_whatever_the_queue_says(
    store: Store, settings: Settings
) -> None:
    queue, notes = QueueStates(), Announcements()
    old = await add_job(store, due_ago=7200)
    lost_and_old = await add_job(store, due_ago=7200)
    queue.states[old.job_id] = "completed"
    report = await reconciler(store, settings, queue, notes).run_once()
    assert (report.checked, report.requeued, report.failed) == (2, 0, 2)
    for job in (old, lost_and_old):
        stored = await store.jobs.get(job.job_id)
        assert stored is not None and stored.status == JobStatus.failed
        assert stored.error == EXPIRED
    assert {j.job_id for j in notes.jobs} == {old.job_id, lost_and_old.job_id}
    assert queue.enqueued == [] and queue.removed == []


async def test_just_under_the_maximum_age_is_queued_again(store: Store, settings: Settings) -> None:
    queue, notes = QueueStates(), Announcements()
    await add_job(store, due_ago=3500)
    report = await reconciler(store, settings, queue, notes).run_once()
    assert (report.requeued, report.failed) == (1, 0)


async def test_jobs_within_the_grace_period_or_final_are_not_checked(
    store: Store, settings: Settings
) -> None:
    queue, notes = QueueStates(), Announcements()
    await add_job(store, due_ago=10)  # due 10 s ago: within the 30 s grace
    await add_job(store, due_ago=-60)  # not due yet
    done = await add_job(store, due_ago=120, status=JobStatus.processing)
    assert await store.jobs.mark_failed(done.job_id, error="x", at=utcnow())
    report = await reconciler(store, settings, queue, notes).run_once()
    assert (report.checked, report.requeued, report.failed) == (0, 0, 0)
    assert queue.enqueued == [] and notes.jobs == []


async def test_a_job_that_finished_between_the_two_reads_is_left_alone(
    store: Store, settings: Settings
) -> None:
    job = await add_job(store, due_ago=120, status=JobStatus.processing)

    class FinishesWhileAsked(QueueStates):
        async def state(self, job_id: str) -> str:
            await store.jobs.mark_failed(job_id, error="done meanwhile", at=utcnow())
            return "unknown"  # its entry is gone: it just finished

    queue, notes = FinishesWhileAsked(), Announcements()
    report = await reconciler(store, settings, queue, notes).run_once()
    assert (report.checked, report.requeued, report.failed) == (1, 0, 0)
    assert queue.enqueued == [] and notes.jobs == []
    stored = await store.jobs.get(job.job_id)
    assert stored is not None and stored.error == "done meanwhile"


async def test_one_round_checks_at_most_a_batch(store: Store, settings: Settings) -> None:
    queue, notes = QueueStates(), Announcements()
    for _ in range(3):
        await add_job(store, due_ago=120)
    r = reconciler(store, settings, queue, notes, reconcile_batch=2)
    first = await r.run_once()
    assert (first.checked, first.requeued) == (2, 2)
    assert len(queue.enqueued) == 2


async def test_run_forever_runs_at_once_then_every_interval_and_survives_a_bad_round(
    store: Store, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smartgen.generation.reconcile")
    rounds: list[str] = []
    stop = asyncio.Event()

    class Flaky(QueueStates):
        async def state(self, job_id: str) -> str:
            rounds.append(job_id)
            if len(rounds) == 1:
                raise StoreUnavailable("Redis went away")  # a round that fails is skipped
            if len(rounds) == 2:
                raise RuntimeError("a bug")  # so is one that breaks, with its traceback
            stop.set()
            return "unknown"  # the third round queues the job again, then it stops

    queue, notes = Flaky(), Announcements()
    job = await add_job(store, due_ago=120)
    r = reconciler(store, settings, queue, notes, reconcile_interval_seconds=0.05)
    await asyncio.wait_for(r.run_forever(stop), 30)
    assert len(rounds) == 3
    assert [e[0] for e in queue.enqueued] == [job.job_id]
    messages = [(rec.levelname, rec.getMessage()) for rec in caplog.records]
    assert messages == [
        ("WARNING", "reconciler skipped a round: Redis went away"),
        ("ERROR", "reconciler error"),
        ("WARNING", f"job {job.job_id} had no queue entry (unknown): queued again"),
        ("INFO", "reconciler: checked 1, queued again 1, failed 0"),
    ]
    assert caplog.records[1].exc_info is not None  # the traceback goes to the log


async def test_one_round_decides_for_every_job_in_turn(store: Store, settings: Settings) -> None:
    """A live entry does not end the round; every decision is counted."""
    queue, notes = QueueStates(), Announcements()
    live = await add_job(store, due_ago=400)
    lost = await add_job(store, due_ago=300)
    failed = [await add_job(store, due_ago=200), await add_job(store, due_ago=100)]
    queue.states[live.job_id] = "active"
    for job in failed:
        queue.states[job.job_id] = "failed"
    report = await reconciler(store, settings, queue, notes).run_once()
    assert (report.checked, report.requeued, report.failed) == (4, 1, 2)
    assert [e[0] for e in queue.enqueued] == [lost.job_id]
    assert {j.job_id for j in notes.jobs} == {j.job_id for j in failed}


async def test_a_job_that_finished_between_the_reads_does_not_end_the_round(
    store: Store, settings: Settings
) -> None:
    jobs = [await add_job(store, due_ago=300), await add_job(store, due_ago=200)]
    asked: list[str] = []

    class FirstFinishesWhileAsked(QueueStates):
        async def state(self, job_id: str) -> str:
            asked.append(job_id)
            if len(asked) == 1:  # whichever the store lists first
                await store.jobs.mark_failed(job_id, error="done meanwhile", at=utcnow())
            return "unknown"

    queue, notes = FirstFinishesWhileAsked(), Announcements()
    report = await reconciler(store, settings, queue, notes).run_once()
    assert (report.checked, report.requeued, report.failed) == (2, 1, 0)
    assert sorted(asked) == sorted(j.job_id for j in jobs)
    assert [e[0] for e in queue.enqueued] == [asked[1]]


async def test_a_job_the_reconciler_fails_gives_its_budget_reservation_back(
    store: Store, settings: Settings
) -> None:
    """Expired or lost, a job that will not run releases what it reserved of the month's
    budget; a job queued again keeps its reservation."""
    queue, notes, budgets = QueueStates(), Announcements(), Reservations()
    expired = await add_job(store, due_ago=7200)
    lost = await add_job(store, due_ago=200)
    queue.states[lost.job_id] = "failed"
    await add_job(store, due_ago=100)  # no queue entry: queued again
    report = await reconciler(store, settings, queue, notes, budgets).run_once()
    assert (report.requeued, report.failed) == (1, 2)
    assert sorted(budgets.released) == sorted([expired.job_id, lost.job_id])


async def test_take_over_requeues_only_the_dead_workers_jobs_under_rescue_ids(
    store: Store, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead worker's leases end and its jobs are queued again at once, each under a
    message id of its own; a live worker's job is left alone; a failure is logged, not
    raised (the leases run out instead)."""
    queue, notes = QueueStates(), Announcements()
    later = utcnow() + timedelta(seconds=60)
    dead = [await add_job(store, due_ago=5), await add_job(store, due_ago=4)]
    live = await add_job(store, due_ago=3)
    for job, owner in ((dead[0], "m1@dead"), (dead[1], "m2@dead"), (live, "m3@live")):
        taken = await store.jobs.mark_processing(
            job.job_id, at=utcnow(), attempt=1, lease_until=later, owner=owner
        )
        assert taken is not None
    subject = reconciler(store, settings, queue, notes)
    with caplog.at_level(logging.WARNING, logger="smartgen.generation.reconcile"):
        assert await subject.take_over("dead") == 2
    [said] = [r.getMessage() for r in caplog.records]
    ids = ", ".join(e[0] for e in queue.enqueued)
    assert said == f"worker dead died running 2 job(s): queued again ({ids})"
    caplog.clear()
    assert sorted(e[0] for e in queue.enqueued) == sorted(j.job_id for j in dead)
    assert all(e[2] == 0 for e in queue.enqueued)
    for (job_id, data, _), message_id in zip(queue.enqueued, queue.message_ids, strict=True):
        assert message_id is not None and message_id.startswith(f"{job_id}-rescue-")
        assert data == queue_message(await store.jobs.get(job_id))  # type: ignore[arg-type]
    assert len(set(queue.message_ids)) == 2
    for job in dead:
        released = await store.jobs.get(job.job_id)
        assert released is not None and released.lease_until is None  # any delivery may take it
    kept = await store.jobs.get(live.job_id)
    assert kept is not None and kept.lease_owner == "m3@live" and kept.lease_until is not None

    class Down(QueueStates):
        async def enqueue(self, **_: Any) -> None:
            raise ConnectionError("queue down")

    await store.jobs.mark_processing(
        live.job_id, at=utcnow(), attempt=1, lease_until=later, owner="m3@live"
    )
    with caplog.at_level(logging.WARNING, logger="smartgen.generation.reconcile"):
        assert await reconciler(store, settings, Down(), notes).take_over("live") == 0
    assert [r.getMessage() for r in caplog.records] == [
        "could not take over the jobs of worker live (ConnectionError): their leases run out "
        "instead"
    ]
