"""generation/control.py's paths that the HTTP tests reach only by luck of timing: a retry
while the old queue entry is still held, a queue that refuses the change (the store is put
back), the record a run leaves in `history`. A real store (the MongoDB wire server) and a
stand-in for the queue whose answers the test scripts; the same calls over the HTTP API and
a real queue are in test_job_control.py."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from smartgen.config import Settings
from smartgen.errors import (
    Conflict,
    NotFound,
    QueueUnavailable,
    TooManyRequests,
    ValidationFailed,
)
from smartgen.generation import control, service
from smartgen.generation.service import queue_message
from smartgen.kit.times import iso_ms, utcnow
from smartgen.models import Job, JobStatus, job_from_wire, job_to_wire
from smartgen.store.base import Store
from tests.test_reconcile import Announcements, add_job


class ScriptedQueue:
    """Answers `remove` from a script (False: a worker still holds the entry), and
    refuses `enqueue` / `reschedule` when told to; records every call."""

    def __init__(self, removes: list[bool] | None = None, refuse: bool = False) -> None:
        self.removes = list(removes or [])
        self.refuse = refuse
        self.calls: list[tuple[str, Any]] = []

    async def remove(self, job_id: str) -> bool:
        self.calls.append(("remove", job_id))
        return self.removes.pop(0) if self.removes else True

    async def enqueue(self, *, job_id: str, data: dict[str, Any], delay_ms: int) -> None:
        self.calls.append(("enqueue", (job_id, data, delay_ms)))
        if self.refuse:
            raise QueueUnavailable("Redis does not answer")

    async def reschedule(self, *, job_id: str, data: dict[str, Any], delay_ms: int) -> None:
        self.calls.append(("reschedule", (job_id, data, delay_ms)))
        if self.refuse:
            raise QueueUnavailable("Redis does not answer")


@pytest.fixture
def quick_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "RETRY_WAIT_SECONDS", 0.03)


async def failed_job(store: Store) -> Job:
    job = await add_job(store, due_ago=120, status=JobStatus.processing)
    assert await store.jobs.mark_failed(job.job_id, error="Generation failed: x", at=utcnow())
    got = await store.jobs.get(job.job_id)
    assert got is not None
    return got


async def retry(store: Store, settings: Settings, queue: ScriptedQueue, job: Job) -> Any:
    return await control.retry_job(
        store=store,
        queue=queue,  # type: ignore[arg-type]
        notifier=Announcements(),
        settings=settings,
        user_id=job.user_id,
        job_id=job.job_id,
    )


@pytest.mark.parametrize("status", [JobStatus.queued, JobStatus.processing])
async def test_only_failed_or_cancelled_jobs_are_retried(
    store: Store, settings: Settings, status: JobStatus
) -> None:
    job = await add_job(store, due_ago=120, status=status)
    queue = ScriptedQueue()
    with pytest.raises(Conflict) as info:
        await retry(store, settings, queue, job)
    assert info.value.code == "job_not_retryable"
    assert info.value.message == (
        f"Only failed or cancelled jobs can be retried; this job is {status.value}"
    )
    assert queue.calls == []


async def test_a_retry_waits_for_a_held_entry_then_answers_job_busy(
    store: Store, settings: Settings, quick_retry_wait: None
) -> None:
    job = await failed_job(store)
    queue = ScriptedQueue(removes=[False] * control.RETRY_WAIT_STEPS)
    with pytest.raises(Conflict) as info:
        await retry(store, settings, queue, job)
    assert info.value.code == "job_busy"
    assert info.value.message == "This job is still stopping; retry it in a moment"
    assert info.value.headers == {"Retry-After": "1"}
    assert queue.calls == [("remove", job.job_id)] * control.RETRY_WAIT_STEPS
    assert await store.jobs.get(job.job_id) == job  # nothing changed


async def test_a_retry_goes_ahead_once_the_held_entry_is_gone(
    store: Store, settings: Settings, quick_retry_wait: None
) -> None:
    job = await failed_job(store)
    queue = ScriptedQueue(removes=[False, False, True])
    s = settings.model_copy(update={"generation_delay_seconds": 2.5})
    notes = Announcements()
    before = utcnow()
    queued = await control.retry_job(
        store=store,
        queue=queue,  # type: ignore[arg-type]
        notifier=notes,
        settings=s,
        user_id=job.user_id,
        job_id=job.job_id,
    )
    assert queued.delay_seconds == 2.5
    again = queued.job
    assert again.status == JobStatus.queued and again.job_id == job.job_id
    assert before + timedelta(seconds=2.5) <= again.scheduled_for
    assert again.scheduled_for <= utcnow() + timedelta(seconds=2.5)
    assert queue.calls == [
        *[("remove", job.job_id)] * 3,
        ("enqueue", (job.job_id, queue_message(again), 2500)),
    ]
    assert notes.jobs == [again]
    assert again.history == [
        {
            "status": "failed",
            "attempts": job.attempts,
            "scheduledFor": iso_ms(job.scheduled_for),
            "startedAt": iso_ms(job.started_at),  # type: ignore[arg-type]
            "error": "Generation failed: x",
            "failedAt": iso_ms(job.failed_at),  # type: ignore[arg-type]
        }
    ]
    assert await store.jobs.get(job.job_id) == again


async def test_a_cancelled_run_leaves_its_cancel_time_in_history(
    store: Store, settings: Settings
) -> None:
    job = await add_job(store, due_ago=120)
    cancelled = await store.jobs.cancel(job.job_id, job.user_id, at=utcnow())
    assert cancelled is not None
    queued = await retry(store, settings, ScriptedQueue(), cancelled)
    [record] = queued.job.history
    assert record == {
        "status": "cancelled",
        "attempts": 0,
        "scheduledFor": iso_ms(cancelled.scheduled_for),
        "cancelledAt": iso_ms(cancelled.cancelled_at),  # type: ignore[arg-type]
    }


async def test_a_retry_the_queue_refuses_puts_the_failed_job_back(
    store: Store, settings: Settings
) -> None:
    job = await failed_job(store)
    with pytest.raises(QueueUnavailable):
        await retry(store, settings, ScriptedQueue(refuse=True), job)
    assert await store.jobs.get(job.job_id) == job


async def test_run_now_moves_the_entry_to_now_or_puts_the_job_back(
    store: Store, settings: Settings
) -> None:
    job = await add_job(store, due_ago=-600)  # due in ten minutes
    refused = ScriptedQueue(refuse=True)
    with pytest.raises(QueueUnavailable):
        await control.run_job_now(
            store=store,
            queue=refused,  # type: ignore[arg-type]
            notifier=Announcements(),
            user_id=job.user_id,
            job_id=job.job_id,
        )
    assert await store.jobs.get(job.job_id) == job  # put back: still due in ten minutes
    queue, notes = ScriptedQueue(), Announcements()
    now = await control.run_job_now(
        store=store,
        queue=queue,  # type: ignore[arg-type]
        notifier=notes,
        user_id=job.user_id,
        job_id=job.job_id,
    )
    assert now.scheduled_for <= utcnow()
    assert queue.calls == [("reschedule", (job.job_id, queue_message(now), 0))]
    assert notes.jobs == [now]
    started = await add_job(store, due_ago=120, status=JobStatus.processing)
    with pytest.raises(Conflict) as info:
        await control.run_job_now(
            store=store,
            queue=queue,  # type: ignore[arg-type]
            notifier=notes,
            user_id=started.user_id,
            job_id=started.job_id,
        )
    assert info.value.code == "job_not_queued"
    assert info.value.message == (
        "Only queued jobs can be changed this way; this job is processing"
    )


# --- generation/service.py: what a worker reads, and the 404 of every route ---------------


async def test_a_queue_message_carries_ids_and_what_to_generate(store: Store) -> None:
    job = await add_job(store, due_ago=0)
    assert queue_message(job) == {
        "jobId": job.job_id,
        "userId": job.user_id,
        "contentType": "Blog Post Outline",
        "prompt": "How to bake bread",
    }
    # A job just stored travels whole, as the store holds it (`mark_processing(expected=…)`).
    stored = queue_message(job, stored=True)
    assert stored == {**queue_message(job), "job": job_to_wire(job)}
    assert job_from_wire(json.loads(json.dumps(stored["job"]))) == await store.jobs.get(job.job_id)


async def test_a_missing_malformed_or_foreign_job_is_the_same_404(store: Store) -> None:
    job = await add_job(store, due_ago=0)
    for user_id, job_id in [
        ("someone-else", job.job_id),  # another user's
        (job.user_id, "5c0f2f4e-0000-4000-8000-000000000000"),  # no such job
        (job.user_id, "../etc/passwd"),  # not an id at all
        (job.user_id, job.job_id.upper() + "x"),
    ]:
        with pytest.raises(NotFound) as info:
            await service.get_job(store=store, user_id=user_id, job_id=job_id)
        assert (info.value.code, info.value.message) == ("job_not_found", "Job not found")
    found = await service.get_job(store=store, user_id=job.user_id, job_id=job.job_id.upper())
    assert found == job  # the canonical spelling of the same UUID


def test_a_prompt_may_be_exactly_as_long_as_allowed(settings: Settings) -> None:
    s = settings.model_copy(update={"prompt_max_chars": 10})
    service.check_prompt(s, "x" * 10)
    with pytest.raises(ValidationFailed) as info:
        service.check_prompt(s, "x" * 11)
    assert info.value.message == "prompt: must be at most 10 characters (got 11)"
    assert info.value.details == [{"field": "prompt", "message": "too long"}]


async def test_the_estimate_without_timings_is_the_configured_processing_time(
    store: Store, settings: Settings
) -> None:
    job = await add_job(store, due_ago=0)
    s = settings.model_copy(update={"expected_processing_seconds": 42.0})
    assert await service.estimate(s, None, job) == job.scheduled_for + timedelta(seconds=42)


async def test_queueing_past_the_cap_says_how_many_and_when_to_come_back(
    store: Store, settings: Settings
) -> None:
    s = settings.model_copy(update={"max_unfinished_jobs": 2, "generation_delay_seconds": 90.4})
    queue, notes = ScriptedQueue(), Announcements()

    async def submit(delay: float | None = None) -> Any:
        return await service.queue_generation(
            store=store,
            queue=queue,  # type: ignore[arg-type]
            notifier=notes,
            settings=s,
            user_id="u-capped",
            prompt="p",
            content_type="Blog Post Outline",
            delay_seconds=delay,
        )

    first = await submit()
    assert first.delay_seconds == 90.4
    chosen = await submit(delay=5.0)  # the caller's delay wins over the setting
    assert chosen.delay_seconds == 5.0
    stored = queue_message(chosen.job, stored=True)  # a new job: the message carries it whole
    assert queue.calls[-1] == ("enqueue", (chosen.job.job_id, stored, 5000))
    assert job_from_wire(stored["job"]) == chosen.job
    with pytest.raises(TooManyRequests) as info:
        await submit()
    assert info.value.code == "too_many_unfinished_jobs"
    assert info.value.message == ("You have 2 unfinished jobs (at most 2); wait for some to finish")
    assert info.value.headers == {"Retry-After": "90"}
    assert await store.jobs.count_unfinished("u-capped") == 2
    assert len(notes.jobs) == 2


def test_a_new_time_is_a_delay_or_a_time_within_the_allowed_window(settings: Settings) -> None:
    """PATCH's time: `delaySeconds` from now, or `scheduledFor` no later than
    MAX_DELAY_SECONDS from now and no earlier than a minute ago (a time a little in the
    past, as clocks differ, means now); not both; neither keeps the job's time."""
    s = settings.model_copy(update={"max_delay_seconds": 600.0})
    now = utcnow()

    def new(**kw: Any) -> Any:
        return control._new_schedule(s, now, **{"delay_seconds": None, "scheduled_for": None, **kw})

    assert new() is None
    assert new(delay_seconds=2.5) == now + timedelta(seconds=2.5)
    latest = now + timedelta(seconds=600)
    assert new(scheduled_for=latest) == latest
    assert new(scheduled_for=now - control.PAST_TOLERANCE) == now
    with pytest.raises(ValidationFailed) as info:
        new(delay_seconds=1.0, scheduled_for=now)
    assert info.value.message == "Give delaySeconds or scheduledFor, not both"
    assert info.value.details == [{"field": "scheduledFor", "message": "not with delaySeconds"}]
    with pytest.raises(ValidationFailed) as info:
        new(scheduled_for=latest + timedelta(milliseconds=1))
    assert info.value.message == (
        f"scheduledFor: must be at most 600 s from now (before {iso_ms(latest)})"
    )
    assert info.value.details == [{"field": "scheduledFor", "message": "too far in the future"}]
    with pytest.raises(ValidationFailed) as info:
        new(scheduled_for=now - control.PAST_TOLERANCE - timedelta(milliseconds=1))
    assert info.value.message == "scheduledFor: must not be in the past"
    assert info.value.details == [{"field": "scheduledFor", "message": "in the past"}]
