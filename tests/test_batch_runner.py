"""The batch runner's turns (`batches/runner.py`) on a real SQLite store, with workers
simulated in this loop: concurrent fills never let more than BATCH_CONCURRENCY of a batch's
jobs into the queue; a claim the queue refused is queued again by the reconciler; the
periodic pass ends a batch whose last job's announcement was lost, once."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from smartgen.batches.runner import BatchRunner
from smartgen.config import Settings
from smartgen.errors import QueueUnavailable
from smartgen.generation.reconcile import Reconciler
from smartgen.kit.times import utcnow
from smartgen.models import Batch, Completion, Job, JobStatus
from smartgen.store.base import Store
from smartgen.store.sql.sqlite import SqliteStore


@dataclass
class RecordingQueue:
    """A queue that keeps what it is given (`JobQueue`); `refuse` fails the next enqueues."""

    enqueued: list[str] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    most: int = 0
    refuse: int = 0
    stall: float = 0.0  # the next enqueue answers this many seconds late

    async def enqueue(
        self, *, job_id: str, data: dict[str, Any], delay_ms: int, message_id: str | None = None
    ) -> None:
        if self.refuse:
            self.refuse -= 1
            raise QueueUnavailable()
        if self.stall:
            stall, self.stall = self.stall, 0.0
            await asyncio.sleep(stall)
        self.enqueued.append(job_id)
        self.active.add(job_id)
        self.most = max(self.most, len(self.active))

    async def remove(self, job_id: str) -> bool:
        return True

    async def reschedule(self, *, job_id: str, data: dict[str, Any], delay_ms: int) -> None:
        return None

    async def cancel(self, job_id: str) -> None:
        self.active.discard(job_id)

    async def state(self, job_id: str) -> str:
        return "waiting" if job_id in self.active else "unknown"


@dataclass
class RecordingNotifier:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def job_changed(self, job: Job, *, settled: bool = False, repeat: bool = False) -> None:
        return None

    async def job_progress(self, job: Job, *, delta: str, length: int, reset: bool) -> None:
        return None

    async def user_event(self, user_id: str, event: str, payload: dict[str, Any]) -> None:
        self.events.append((event, payload))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = SqliteStore(f"sqlite:///{tmp_path / 'runner.db'}")
    await opened.init()
    try:
        yield opened
    finally:
        await opened.close()


def settings(**kw: Any) -> Settings:
    chosen: dict[str, Any] = {"batch_concurrency": 3, "reconcile_grace_seconds": 0, **kw}
    return Settings(_env_file=None, **chosen)  # type: ignore[call-arg]


async def new_batch(store: Store, rows: int) -> Batch:
    now = utcnow()
    batch = Batch(
        batch_id=str(uuid.uuid4()), user_id="u1", status="running", total=rows,
        accepted=rows, rejected=[], created_at=now, updated_at=now,
    )  # fmt: skip
    jobs = [
        Job(
            job_id=str(uuid.uuid4()),
            user_id="u1",
            status=JobStatus.queued,
            prompt=f"row {n}",
            content_type="Blog Post Outline",
            scheduled_for=now - timedelta(seconds=1),
            created_at=now,
            updated_at=now,
            batch_id=batch.batch_id,
            batch_row=n,
            batch_held=True,
        )
        for n in range(1, rows + 1)
    ]
    await store.batches.create(batch, jobs)
    return batch


async def test_concurrent_turns_never_pass_the_batch_concurrency(store: Store) -> None:
    queue, notifier = RecordingQueue(), RecordingNotifier()
    runner = BatchRunner(store=store, queue=queue, notifier=notifier, settings=settings())
    batch = await new_batch(store, 40)
    # Ten fills at once: each counts and claims under the batch's lock, one after another.
    await asyncio.gather(*(runner.next_turns(batch.batch_id) for _ in range(10)))
    assert len(queue.enqueued) == 3
    done: list[str] = []

    async def worker() -> None:
        while len(done) < 40:
            ready = [j for j in queue.enqueued if j in queue.active]
            if not ready:
                await asyncio.sleep(0.001)
                continue
            job_id = random.choice(ready)
            queue.active.discard(job_id)  # it leaves the queue before its slot frees
            if not await store.jobs.mark_processing(job_id, at=utcnow(), attempt=1, owner=job_id):
                continue  # another simulated worker took it
            await asyncio.sleep(random.random() / 200)
            result = Completion("# done", "fake/model-1", {"cost": 0.5})
            assert await store.jobs.mark_completed(job_id, result=result, at=utcnow())
            done.append(job_id)
            await runner.next_turns(batch.batch_id)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(6))), 60)
    assert sorted(done) == sorted(set(queue.enqueued)) and len(done) == 40
    assert queue.most == 3  # full, never more
    final = await store.batches.get(batch.batch_id)
    assert final is not None and final.status == "completed"
    completed = [p for e, p in notifier.events if e == "batch_completed"]
    assert len(completed) == 1 and completed[0]["costUsd"] == pytest.approx(20.0)
    assert completed[0]["counts"]["completed"] == 40 and completed[0]["progress"] == 1


async def test_a_fill_that_stalled_past_its_lock_stops_when_another_took_over(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filler whose queue answered late (past the batch lock) while another filler counted
    and filled the batch claims nothing more: its count is stale once the lock changed
    hands. Before the lock was renewed and checked, it went on claiming the free slots it
    had counted, and the batch had five jobs in the queue for three slots."""
    from smartgen.batches import runner as runner_module

    monkeypatch.setattr(runner_module, "LOCK_SECONDS", 0.4)
    queue, notifier = RecordingQueue(stall=1.0), RecordingNotifier()
    runner = BatchRunner(store=store, queue=queue, notifier=notifier, settings=settings())
    batch = await new_batch(store, 10)
    stalled = asyncio.create_task(runner.next_turns(batch.batch_id))  # claims one, stalls
    await asyncio.sleep(0.6)  # its lock has run out
    await runner.next_turns(batch.batch_id)  # takes the lock over: two more fill the slots
    assert len(queue.enqueued) == 2
    await stalled  # its stalled enqueue lands; then it finds the lock no longer its own
    counts = await store.batches.counts(batch.batch_id)
    assert (counts.in_queue, counts.waiting) == (3, 7)
    assert len(queue.enqueued) == 3 and queue.most == 3
    got = await store.batches.get(batch.batch_id)
    assert got is not None and got.lock_owner is None  # the second filler gave it back


async def test_a_claim_the_queue_refused_is_queued_by_the_reconciler(store: Store) -> None:
    queue, notifier = RecordingQueue(refuse=1), RecordingNotifier()
    s = settings()
    runner = BatchRunner(store=store, queue=queue, notifier=notifier, settings=s)
    batch = await new_batch(store, 5)
    await runner.next_turns(batch.batch_id)
    assert queue.enqueued == []  # the first claim was refused: the fill stopped there
    counts = await store.batches.counts(batch.batch_id)
    assert (counts.in_queue, counts.waiting) == (1, 4)
    reconciler = Reconciler(
        store=store, queue=queue, notifier=notifier, settings=s, turns=runner, sweep=runner.sweep
    )
    report = await reconciler.run_once()
    assert report.requeued == 1  # the claimed job, which had no queue entry
    # ... and the sweep filled the batch's other slots.
    assert len(queue.enqueued) == 3 and len(set(queue.enqueued)) == 3


async def test_the_sweep_ends_a_batch_whose_end_was_not_announced(store: Store) -> None:
    queue, notifier = RecordingQueue(), RecordingNotifier()
    runner = BatchRunner(store=store, queue=queue, notifier=notifier, settings=settings())
    batch = await new_batch(store, 2)
    for _ in range(2):
        job = await store.batches.claim_next(batch.batch_id, at=utcnow())
        assert job is not None
        assert await store.jobs.mark_failed(job.job_id, error="boom", at=utcnow())
    # Both ended while their worker died before the batch heard of it.
    assert await runner.sweep() == 1
    assert await runner.sweep() == 0
    ended = [p for e, p in notifier.events if e == "batch_completed"]
    assert len(ended) == 1 and ended[0]["counts"]["failed"] == 2
    assert ended[0]["status"] == "completed"
