"""generation/control.py in detail, in process and quickly: cancel, change, run now and
retry over a real SQLite store, the real queue (bullmq on the session's private Redis),
the Redis budgets and live text, each outcome pinned exactly: what the store holds, what
the queue holds (state, delay, message), what the budget holds, what was announced and
logged. Where a test needs the queue to fail at one precise moment, a small stand-in
says so (`RefusingQueue`). The same calls over the HTTP API and a worker are in
test_job_control.py; these run in seconds, so a mutation run can afford them
(bench/mutation.py's first stage). `store`, `redis` and `queue` are conftest's, over
this module's `s`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from bullmq import Job as QueueEntry
from bullmq import Queue
from redis.exceptions import ConnectionError as RedisConnectionError

from smartgen.config import Settings
from smartgen.errors import (
    Conflict,
    NotFound,
    PaymentRequired,
    QueueUnavailable,
    TooManyRequests,
    ValidationFailed,
)
from smartgen.generation import budget, control, service
from smartgen.generation.budget import month_of
from smartgen.generation.prompts import model_request
from smartgen.generation.service import queue_message
from smartgen.kit.times import iso_ms, utcnow
from smartgen.models import Batch, Job, JobStatus
from smartgen.ports import ModelPrice
from smartgen.queue.budgets import RedisBudgets
from smartgen.queue.producer import GenerationQueue, cancel_channel
from smartgen.realtime.live_text import RedisLiveText
from smartgen.redis_clients import redis_client
from smartgen.store.base import Store
from tests.conftest import free_port

BUDGET = 1_000_000  # tokens a month: far from the 80 % warning
PROMPT = "How to bake bread"
TYPE = "Blog Post Outline"


@pytest.fixture
def store_kind() -> str:
    return "sqlite"  # the default of `make run`


@pytest.fixture
def s(settings: Settings) -> Settings:
    return settings.model_copy(update={"user_monthly_token_budget": BUDGET})


@pytest.fixture
async def entries(s: Settings, redis: aioredis.Redis) -> AsyncIterator[Callable[..., Any]]:
    """The queue's entry for a job id, as bullmq reads it (None: no entry)."""
    reader = Queue(s.queue_name, {"connection": redis, "prefix": s.queue_prefix})

    async def entry(job_id: str) -> QueueEntry | None:
        return await QueueEntry.fromId(reader, job_id)

    yield entry


@pytest.fixture
def budgets(redis: aioredis.Redis, s: Settings) -> RedisBudgets:
    return RedisBudgets(redis, f"{s.queue_prefix}:smartgen")


@pytest.fixture
def dead(env: dict[str, str]) -> Settings:
    """This test's settings with Redis at a port nothing listens on (built anew: a copy
    would keep the derived Redis address)."""
    chosen = {k.lower(): v for k, v in env.items()}
    chosen.update(redis_url=f"redis://127.0.0.1:{free_port()}/0", queue_timeout_seconds="1")
    return Settings(_env_file=None, **chosen)  # type: ignore[arg-type]


class Notes:
    """The notifier's calls, in order."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.user_events: list[tuple[str, str, dict[str, Any]]] = []

    async def job_changed(self, job: Job, *, settled: bool = False, repeat: bool = False) -> None:
        self.jobs.append(job)

    async def job_progress(self, job: Job, *, delta: str, length: int, reset: bool) -> None:
        raise AssertionError("control writes no text")

    async def user_event(self, user_id: str, event: str, payload: dict[str, Any]) -> None:
        self.user_events.append((user_id, event, payload))


class TurnsCalled:
    """`ports.BatchTurns`: the batches whose turns were handed on."""

    def __init__(self) -> None:
        self.batches: list[str] = []

    async def next_turns(self, batch_id: str) -> None:
        self.batches.append(batch_id)


class KnownTimings:
    """`ports.Timings` that has seen blog post outlines take 12.5 s (and nothing else)."""

    async def typical_seconds(self, content_type: str) -> float | None:
        return 12.5 if content_type == TYPE else None

    async def record(self, content_type: str, seconds: float) -> None:
        raise AssertionError("control records no timings")


class FixedPrices:
    async def price(self, model: str) -> ModelPrice | None:
        return ModelPrice(prompt=0.000001, completion=0.000002)


class RefusingQueue:
    """The real queue, except that `enqueue` / `reschedule` run `before` (something else
    changing the job at that moment) and then refuse, as a Redis that stopped answering
    does; `remove` may run `on_remove` first."""

    def __init__(
        self,
        real: GenerationQueue,
        before: Callable[[], Awaitable[Any]] | None = None,
        on_remove: Callable[[], Awaitable[Any]] | None = None,
        refuse: bool = True,
    ) -> None:
        self.real, self.before, self.on_remove, self.refuse = real, before, on_remove, refuse

    async def _refuse(self) -> None:
        if self.before is not None:
            await self.before()
        raise QueueUnavailable("Redis does not answer")

    async def enqueue(self, *, job_id: str, data: dict[str, Any], delay_ms: int) -> None:
        if self.refuse:
            await self._refuse()
        await self.real.enqueue(job_id=job_id, data=data, delay_ms=delay_ms)

    async def reschedule(self, *, job_id: str, data: dict[str, Any], delay_ms: int) -> None:
        await self._refuse()

    async def remove(self, job_id: str) -> bool:
        if self.on_remove is not None:
            await self.on_remove()
        return await self.real.remove(job_id)

    async def cancel(self, job_id: str) -> None:
        await self.real.cancel(job_id)


async def submit(
    store: Store,
    queue: Any,
    s: Settings,
    budgets: RedisBudgets | None,
    *,
    user_id: str | None = None,
    delay: float = 600.0,
    prompt: str = PROMPT,
) -> Job:
    queued = await service.queue_generation(
        store=store, queue=queue, notifier=Notes(), settings=s,
        user_id=user_id or uuid.uuid4().hex[:24], prompt=prompt, content_type=TYPE,
        delay_seconds=delay, budgets=budgets,
    )  # fmt: skip
    return queued.job


async def quoted_tokens(s: Settings, prompt: str = PROMPT, content_type: str = TYPE) -> int:
    return (await budget.quote(s, None, model_request(content_type, prompt, None))).tokens


async def used(budgets: RedisBudgets, user_id: str) -> int:
    tokens, _ = await budgets.used(user_id, month_of(utcnow()))
    return tokens


async def ended(store: Store, job: Job, status: JobStatus) -> Job:
    """The job taken by a worker, then failed or cancelled."""
    assert await store.jobs.mark_processing(job.job_id, at=utcnow(), attempt=1)
    if status is JobStatus.failed:
        assert await store.jobs.mark_failed(job.job_id, error="Generation failed: x", at=utcnow())
    else:
        assert await store.jobs.cancel(job.job_id, job.user_id, at=utcnow())
    got = await store.jobs.get(job.job_id)
    assert got is not None and got.status is status
    return got


async def new_batch(store: Store, user_id: str, rows: int, *, status: str = "running") -> Batch:
    now = utcnow()
    batch = Batch(
        batch_id=str(uuid.uuid4()), user_id=user_id, status=status,  # type: ignore[arg-type]
        total=rows, accepted=rows, rejected=[], created_at=now, updated_at=now,
    )  # fmt: skip
    jobs = [
        Job(
            job_id=str(uuid.uuid4()),
            user_id=user_id,
            status=JobStatus.queued,
            prompt=f"row {n}",
            content_type=TYPE,
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


async def batch_jobs(store: Store, batch: Batch) -> list[Job]:
    page = await store.batches.jobs_page(batch.batch_id, after_row=0, limit=100)
    return list(page)


# --- cancel ----------------------------------------------------------------------------------


async def test_a_cancel_ends_the_job_its_queue_entry_and_its_reservation(
    store: Store,
    queue: GenerationQueue,
    s: Settings,
    budgets: RedisBudgets,
    redis: Any,
    entries: Any,
) -> None:
    job = await submit(store, queue, s, budgets)
    assert await used(budgets, job.user_id) == await quoted_tokens(s)
    assert (await queue.state(job.job_id)) == "delayed"
    listener = redis.pubsub()
    await listener.subscribe(cancel_channel(s))
    notes, turns = Notes(), TurnsCalled()
    cancelled = await control.cancel_job(
        store=store, queue=queue, notifier=notes, user_id=job.user_id, job_id=job.job_id,
        budgets=budgets, turns=turns,
    )  # fmt: skip
    assert cancelled.status is JobStatus.cancelled and cancelled.cancelled_at is not None
    assert await store.jobs.get(job.job_id) == cancelled
    assert await entries(job.job_id) is None  # the entry is gone
    assert await used(budgets, job.user_id) == 0  # the reservation given back
    assert notes.jobs == [cancelled]
    assert turns.batches == []  # not a batch's job
    messages = []
    for _ in range(50):
        message = await listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            messages.append(message["data"])
            break
    assert messages == [job.job_id]  # the workers are told
    await listener.aclose()
    # A second cancel: 409 naming the state; nothing announced, nothing given back again.
    with pytest.raises(Conflict) as info:
        await control.cancel_job(
            store=store, queue=queue, notifier=notes, user_id=job.user_id, job_id=job.job_id
        )
    assert info.value.code == "job_final"
    assert info.value.message == "This job is already cancelled; there is nothing to cancel"
    assert notes.jobs == [cancelled]


async def test_a_cancel_of_a_completed_or_foreign_job_changes_nothing(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets
) -> None:
    job = await submit(store, queue, s, budgets)
    notes = Notes()
    with pytest.raises(NotFound) as found:
        await control.cancel_job(
            store=store, queue=queue, notifier=notes, user_id="someone-else",
            job_id=job.job_id, budgets=budgets,
        )  # fmt: skip
    assert found.value.code == "job_not_found"
    assert await store.jobs.get(job.job_id) == job
    assert await used(budgets, job.user_id) == await quoted_tokens(s)
    failed = await ended(store, job, JobStatus.failed)
    with pytest.raises(Conflict) as info:
        await control.cancel_job(
            store=store, queue=queue, notifier=notes, user_id=job.user_id,
            job_id=job.job_id, budgets=budgets,
        )  # fmt: skip
    assert (info.value.code, info.value.message) == (
        "job_final",
        "This job is already failed; there is nothing to cancel",
    )
    assert await store.jobs.get(job.job_id) == failed
    assert notes.jobs == []


async def test_a_cancel_the_queue_cannot_carry_out_still_holds_in_the_store(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets, dead: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    job = await submit(store, queue, s, budgets)
    unreachable = GenerationQueue(dead, redis_client(dead, "request"))
    notes = Notes()
    try:
        with caplog.at_level(logging.WARNING, logger="smartgen.generation.control"):
            cancelled = await control.cancel_job(
                store=store, queue=unreachable, notifier=notes, user_id=job.user_id,
                job_id=job.job_id, budgets=budgets,
            )  # fmt: skip
    finally:
        await unreachable.close()
    assert cancelled.status is JobStatus.cancelled
    assert await store.jobs.get(job.job_id) == cancelled
    assert notes.jobs == [cancelled]
    assert await used(budgets, job.user_id) == 0
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"job {job.job_id} cancelled, but its queue entry could not be removed")
    ]


async def test_cancelling_a_batchs_job_hands_its_turn_on(
    store: Store, queue: GenerationQueue
) -> None:
    user = uuid.uuid4().hex[:24]
    batch = await new_batch(store, user, 2)
    first, second = await batch_jobs(store, batch)
    turns = TurnsCalled()
    cancelled = await control.cancel_job(
        store=store, queue=queue, notifier=Notes(), user_id=user, job_id=first.job_id,
        turns=turns,
    )  # fmt: skip
    assert cancelled.status is JobStatus.cancelled
    assert turns.batches == [batch.batch_id]
    # Without the batch turns (a caller that has none), the cancel still holds.
    again = await control.cancel_job(
        store=store, queue=queue, notifier=Notes(), user_id=user, job_id=second.job_id
    )
    assert again.status is JobStatus.cancelled
    assert turns.batches == [batch.batch_id]


# --- change while queued ----------------------------------------------------------------------


async def test_a_new_delay_moves_the_queue_entry_to_exactly_that_delay(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets, entries: Any
) -> None:
    job = await submit(store, queue, s, budgets)
    notes = Notes()
    changed = await control.update_job(
        store=store, queue=queue, notifier=notes, settings=s, user_id=job.user_id,
        job_id=job.job_id, delay_seconds=2.5, budgets=budgets,
    )  # fmt: skip
    # The store decided at `updated_at`; the new time is 2.5 s after it.
    assert changed.scheduled_for == changed.updated_at + timedelta(seconds=2.5)
    assert (changed.prompt, changed.status) == (PROMPT, JobStatus.queued)
    assert await store.jobs.get(job.job_id) == changed
    entry = await entries(job.job_id)
    assert entry is not None and entry.delay == 2500
    assert entry.data == queue_message(changed)
    assert notes.jobs == [changed]
    assert await used(budgets, job.user_id) == await quoted_tokens(s)  # no new quote
    # A time a little in the past (clocks differ) means now: no delay at all.
    now = utcnow()
    moved = await control.update_job(
        store=store, queue=queue, notifier=notes, settings=s, user_id=job.user_id,
        job_id=job.job_id, scheduled_for=now - timedelta(seconds=30),
    )  # fmt: skip
    assert moved.scheduled_for == moved.updated_at
    entry = await entries(job.job_id)
    assert entry is not None and entry.delay == 0
    assert await queue.state(job.job_id) == "waiting"
    assert notes.jobs == [changed, moved]


async def test_a_new_prompt_or_type_is_quoted_again_and_keeps_the_time(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets, entries: Any
) -> None:
    job = await submit(store, queue, s, budgets)
    before_entry = await entries(job.job_id)
    assert before_entry is not None
    longer = "How to bake bread, with a long list of every step " * 20
    notes = Notes()
    changed = await control.update_job(
        store=store, queue=queue, notifier=notes, settings=s, user_id=job.user_id,
        job_id=job.job_id, prompt=longer, budgets=budgets,
    )  # fmt: skip
    assert (changed.prompt, changed.content_type) == (longer, TYPE)
    assert changed.scheduled_for == job.scheduled_for  # no new time
    assert await used(budgets, job.user_id) == await quoted_tokens(s, longer)
    assert await quoted_tokens(s, longer) > await quoted_tokens(s)
    entry = await entries(job.job_id)  # the entry keeps its time (the worker loads by id)
    assert entry is not None and (entry.timestamp, entry.delay) == (
        before_entry.timestamp,
        before_entry.delay,
    )
    assert notes.jobs == [changed]
    other = "Product Description"
    retyped = await control.update_job(
        store=store, queue=queue, notifier=notes, settings=s, user_id=job.user_id,
        job_id=job.job_id, content_type=other, budgets=budgets,
    )  # fmt: skip
    assert (retyped.prompt, retyped.content_type) == (longer, other)
    assert await used(budgets, job.user_id) == await quoted_tokens(s, longer, other)
    assert await quoted_tokens(s, longer, other) != await quoted_tokens(s, longer)


async def test_a_larger_quote_that_no_longer_fits_leaves_the_job_as_it_was(
    store: Store, queue: GenerationQueue, s: Settings, redis: Any
) -> None:
    first = await quoted_tokens(s)
    tight = s.model_copy(update={"user_monthly_token_budget": first + 5})
    budgets = RedisBudgets(redis, f"{s.queue_prefix}:smartgen")
    job = await submit(store, queue, tight, budgets)
    notes = Notes()
    with pytest.raises(PaymentRequired) as info:
        await control.update_job(
            store=store, queue=queue, notifier=notes, settings=tight, user_id=job.user_id,
            job_id=job.job_id, prompt=PROMPT + " and cakes, and pies, and tarts", budgets=budgets,
            delay_seconds=5,
        )  # fmt: skip
    assert info.value.code == "budget_exceeded"
    assert await store.jobs.get(job.job_id) == job
    assert await used(budgets, job.user_id) == first
    assert notes.jobs == []


async def test_a_started_job_cannot_be_changed_and_is_not_quoted_again(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets
) -> None:
    job = await submit(store, queue, s, budgets)
    assert await store.jobs.mark_processing(job.job_id, at=utcnow(), attempt=1)
    started = await store.jobs.get(job.job_id)
    notes = Notes()
    tight = s.model_copy(update={"user_monthly_token_budget": 1})  # any new quote: 402
    with pytest.raises(Conflict) as info:
        await control.update_job(
            store=store, queue=queue, notifier=notes, settings=tight, user_id=job.user_id,
            job_id=job.job_id, prompt="Another prompt", budgets=budgets,
        )  # fmt: skip
    assert (info.value.code, info.value.message) == (
        "job_not_queued",
        "Only queued jobs can be changed this way; this job is processing",
    )
    assert await store.jobs.get(job.job_id) == started
    assert await used(budgets, job.user_id) == await quoted_tokens(s)
    assert notes.jobs == []


async def test_a_prompt_too_long_is_refused_before_anything_changes(
    store: Store, queue: GenerationQueue, s: Settings
) -> None:
    job = await submit(store, queue, s, None)
    short = s.model_copy(update={"prompt_max_chars": 20})
    with pytest.raises(ValidationFailed) as info:
        await control.update_job(
            store=store, queue=queue, notifier=Notes(), settings=short, user_id=job.user_id,
            job_id=job.job_id, prompt="x" * 21, delay_seconds=1,
        )  # fmt: skip
    assert info.value.message == "prompt: must be at most 20 characters (got 21)"
    assert await store.jobs.get(job.job_id) == job


async def test_a_waiting_batch_job_gets_its_new_time_without_a_queue_entry(
    store: Store, queue: GenerationQueue, s: Settings, entries: Any
) -> None:
    user = uuid.uuid4().hex[:24]
    batch = await new_batch(store, user, 1)
    [job] = await batch_jobs(store, batch)
    notes = Notes()
    changed = await control.update_job(
        store=store, queue=queue, notifier=notes, settings=s, user_id=user,
        job_id=job.job_id, delay_seconds=30,
    )  # fmt: skip
    assert changed.batch_held is True
    assert changed.scheduled_for == changed.updated_at + timedelta(seconds=30)
    assert await entries(job.job_id) is None  # its turn comes from the batch
    assert notes.jobs == [changed]


async def test_a_change_the_queue_refuses_is_undone_or_logged_when_the_job_moved_on(
    store: Store, queue: GenerationQueue, s: Settings, entries: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    job = await submit(store, queue, s, None)
    notes = Notes()
    with (
        caplog.at_level(logging.DEBUG, logger="smartgen.generation.control"),
        pytest.raises(QueueUnavailable),
    ):
        await control.update_job(
            store=store, queue=RefusingQueue(queue), notifier=notes, settings=s,  # type: ignore[arg-type]
            user_id=job.user_id, job_id=job.job_id, delay_seconds=5, prompt="Another prompt",
        )  # fmt: skip
    assert await store.jobs.get(job.job_id) == job  # put back: prompt and time
    assert caplog.records == []  # put back: nothing to report
    assert notes.jobs == []
    # The job started while the queue refused: it cannot be put back, and says so.

    async def starts() -> None:
        assert await store.jobs.mark_processing(job.job_id, at=utcnow(), attempt=1)

    with (
        caplog.at_level(logging.ERROR, logger="smartgen.generation.control"),
        pytest.raises(QueueUnavailable),
    ):
        await control.run_job_now(
            store=store, queue=RefusingQueue(queue, before=starts), notifier=notes,  # type: ignore[arg-type]
            user_id=job.user_id, job_id=job.job_id,
        )  # fmt: skip
    got = await store.jobs.get(job.job_id)
    assert got is not None and got.status is JobStatus.processing
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"job {job.job_id}: queue refused the change and the job moved on")
    ]


async def test_run_now_lets_a_waiting_batch_job_out_of_turn(
    store: Store, queue: GenerationQueue, entries: Any
) -> None:
    user = uuid.uuid4().hex[:24]
    batch = await new_batch(store, user, 1)
    [job] = await batch_jobs(store, batch)
    notes = Notes()
    now = await control.run_job_now(
        store=store, queue=queue, notifier=notes, user_id=user, job_id=job.job_id
    )
    assert now.batch_held is False and now.scheduled_for == now.updated_at
    entry = await entries(job.job_id)
    assert entry is not None and entry.delay == 0 and entry.data == queue_message(now)
    assert notes.jobs == [now]


# --- retry ------------------------------------------------------------------------------------


async def test_a_retry_counts_against_the_unfinished_cap_up_to_the_cap_exactly(
    store: Store, queue: GenerationQueue, s: Settings
) -> None:
    capped = s.model_copy(update={"max_unfinished_jobs": 2, "generation_delay_seconds": 7.4})
    user = uuid.uuid4().hex[:24]
    failed = [
        await ended(store, await submit(store, queue, s, None, user_id=user), JobStatus.failed)
        for _ in range(3)
    ]
    await submit(store, queue, s, None, user_id=user)  # 1 unfinished
    queued = await control.retry_job(
        store=store, queue=queue, notifier=Notes(), settings=capped, user_id=user,
        job_id=failed[0].job_id,
    )  # fmt: skip
    assert queued.job.status is JobStatus.queued  # 1 < 2: taken; now 2
    with pytest.raises(TooManyRequests) as info:
        await control.retry_job(
            store=store, queue=queue, notifier=Notes(), settings=capped, user_id=user,
            job_id=failed[1].job_id,
        )  # fmt: skip
    assert info.value.code == "too_many_unfinished_jobs"
    assert info.value.message == "You have 2 unfinished jobs (at most 2); wait for some to finish"
    assert info.value.headers == {"Retry-After": "7"}
    assert await store.jobs.get(failed[1].job_id) == failed[1]
    # 0 turns the cap off.
    uncapped = capped.model_copy(update={"max_unfinished_jobs": 0})
    again = await control.retry_job(
        store=store, queue=queue, notifier=Notes(), settings=uncapped, user_id=user,
        job_id=failed[1].job_id,
    )  # fmt: skip
    assert again.job.status is JobStatus.queued
    assert await store.jobs.count_unfinished(user) == 3


async def test_a_retry_reserves_its_quote_and_gives_it_back_when_the_queue_refuses(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets, entries: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    job = await ended(store, await submit(store, queue, s, budgets), JobStatus.failed)
    await budgets.release(job.job_id)  # as the worker does for a failed job
    assert await used(budgets, job.user_id) == 0
    with (
        caplog.at_level(logging.DEBUG, logger="smartgen.generation.control"),
        pytest.raises(QueueUnavailable),
    ):
        await control.retry_job(
            store=store, queue=RefusingQueue(queue), notifier=Notes(), settings=s,  # type: ignore[arg-type]
            user_id=job.user_id, job_id=job.job_id, budgets=budgets,
        )  # fmt: skip
    assert await store.jobs.get(job.job_id) == job
    assert await used(budgets, job.user_id) == 0
    assert caplog.records == []  # put back: nothing to report
    notes = Notes()
    queued = await control.retry_job(
        store=store, queue=queue, notifier=notes, settings=s, user_id=job.user_id,
        job_id=job.job_id, budgets=budgets, prices=FixedPrices(),
    )  # fmt: skip
    assert await used(budgets, job.user_id) == await quoted_tokens(s)
    quote = await budget.quote(s, FixedPrices(), model_request(TYPE, PROMPT, None))
    assert quote.cost is not None and quote.cost > 0
    assert queued.estimated_cost == quote.cost
    assert queued.delay_seconds == s.generation_delay_seconds
    assert queued.job.scheduled_for == queued.job.updated_at + timedelta(
        seconds=s.generation_delay_seconds
    )
    assert queued.estimated_completion == queued.job.scheduled_for + timedelta(
        seconds=s.expected_processing_seconds
    )
    entry = await entries(job.job_id)
    assert entry is not None and entry.delay == round(s.generation_delay_seconds * 1000)
    assert entry.data == queue_message(queued.job)
    assert notes.jobs == [queued.job] and queued.job.batch_held is False


async def test_a_retry_that_cannot_be_queued_nor_put_back_says_so(
    store: Store, queue: GenerationQueue, s: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    job = await ended(store, await submit(store, queue, s, None), JobStatus.failed)

    async def cancelled_meanwhile() -> None:
        assert await store.jobs.cancel(job.job_id, job.user_id, at=utcnow())

    with (
        caplog.at_level(logging.ERROR, logger="smartgen.generation.control"),
        pytest.raises(QueueUnavailable),
    ):
        await control.retry_job(
            store=store, queue=RefusingQueue(queue, before=cancelled_meanwhile),  # type: ignore[arg-type]
            notifier=Notes(), settings=s, user_id=job.user_id, job_id=job.job_id,
        )  # fmt: skip
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"job {job.job_id}: could not be queued again nor put back")
    ]


async def test_a_retry_that_loses_a_race_is_a_409_naming_the_state(
    store: Store, queue: GenerationQueue, s: Settings
) -> None:
    job = await ended(store, await submit(store, queue, s, None), JobStatus.cancelled)

    async def retried_meanwhile() -> None:  # another request's retry wins
        await store.jobs.requeue(
            job.job_id, job.user_id, scheduled_for=utcnow(), at=utcnow(), history=[]
        )

    notes = Notes()
    with pytest.raises(Conflict) as info:
        await control.retry_job(
            store=store, queue=RefusingQueue(queue, on_remove=retried_meanwhile, refuse=False),  # type: ignore[arg-type]
            notifier=notes, settings=s, user_id=job.user_id, job_id=job.job_id,
        )  # fmt: skip
    assert (info.value.code, info.value.message) == (
        "job_not_retryable",
        "Only failed or cancelled jobs can be changed this way; this job is queued",
    )
    assert notes.jobs == []


async def test_a_batchs_job_retried_waits_its_turn_in_its_reopened_batch(
    store: Store, queue: GenerationQueue, s: Settings, entries: Any
) -> None:
    user = uuid.uuid4().hex[:24]
    batch = await new_batch(store, user, 3)
    first, second, third = await batch_jobs(store, batch)
    for job in (first, second, third):
        assert await store.jobs.cancel(job.job_id, user, at=utcnow())
    assert await store.batches.finish(batch.batch_id, status="cancelled", at=utcnow())
    # The cap does not apply to a batch's job: it waits its turn instead.
    capped = s.model_copy(update={"max_unfinished_jobs": 1})
    await submit(store, queue, s, None, user_id=user)  # 1 unfinished: at the cap
    turns, notes = TurnsCalled(), Notes()
    queued = await control.retry_job(
        store=store, queue=queue, notifier=notes, settings=capped, user_id=user,
        job_id=first.job_id, turns=turns, prices=FixedPrices(), timings=KnownTimings(),
    )  # fmt: skip
    assert queued.job.status is JobStatus.queued and queued.job.batch_held is True
    assert turns.batches == [batch.batch_id]
    assert notes.jobs == [queued.job]
    assert await entries(first.job_id) is None  # not in the queue: its turn comes
    reopened = await store.batches.get(batch.batch_id)
    assert reopened is not None and reopened.status == "running"
    assert reopened.updated_at == queued.job.updated_at  # the retry's time
    quote = await budget.quote(s, FixedPrices(), model_request(TYPE, "row 1", None))
    assert (queued.estimated_cost, queued.delay_seconds) == (quote.cost, s.generation_delay_seconds)
    assert queued.estimated_completion == queued.job.scheduled_for + timedelta(seconds=12.5)
    # No recent timings: the configured processing time.
    untimed = await control.retry_job(
        store=store, queue=queue, notifier=notes, settings=s, user_id=user,
        job_id=third.job_id, turns=turns,
    )  # fmt: skip
    assert untimed.estimated_completion == untimed.job.scheduled_for + timedelta(
        seconds=s.expected_processing_seconds
    )
    # Without the batch turns, the job goes into the queue, the cap applies, and its
    # batch, finished again meanwhile, stays finished.
    assert await store.batches.finish(batch.batch_id, status="cancelled", at=utcnow())
    with pytest.raises(TooManyRequests):
        await control.retry_job(
            store=store, queue=queue, notifier=notes, settings=capped, user_id=user,
            job_id=second.job_id,
        )  # fmt: skip
    plain = await control.retry_job(
        store=store, queue=queue, notifier=notes, settings=s, user_id=user,
        job_id=second.job_id, timings=KnownTimings(),
    )  # fmt: skip
    assert plain.job.batch_held is False
    finished = await store.batches.get(batch.batch_id)
    assert finished is not None and finished.status == "cancelled"
    assert plain.estimated_completion == plain.job.scheduled_for + timedelta(seconds=12.5)
    assert await entries(second.job_id) is not None


async def test_each_retry_adds_the_run_it_ended_to_the_history(
    store: Store, queue: GenerationQueue, s: Settings
) -> None:
    job = await ended(store, await submit(store, queue, s, None), JobStatus.failed)
    first = (await control.retry_job(
        store=store, queue=queue, notifier=Notes(), settings=s, user_id=job.user_id,
        job_id=job.job_id,
    )).job  # fmt: skip
    second_run = await ended(store, first, JobStatus.cancelled)
    second = (await control.retry_job(
        store=store, queue=queue, notifier=Notes(), settings=s, user_id=job.user_id,
        job_id=job.job_id,
    )).job  # fmt: skip
    assert second.history == [control.run_record(job), control.run_record(second_run)]
    assert second.history[1] == {
        "status": "cancelled",
        "attempts": 1,
        "scheduledFor": iso_ms(second_run.scheduled_for),
        "startedAt": iso_ms(second_run.started_at),  # type: ignore[arg-type]
        "cancelledAt": iso_ms(second_run.cancelled_at),  # type: ignore[arg-type]
    }


def test_a_run_record_names_only_what_the_run_had() -> None:
    at = utcnow()
    job = Job(
        job_id=str(uuid.uuid4()), user_id="u", status=JobStatus.failed, prompt="p",
        content_type=TYPE, scheduled_for=at, created_at=at, updated_at=at,
        error="Generation failed: never started", attempts=0,
    )  # fmt: skip
    assert control.run_record(job) == {
        "status": "failed",
        "attempts": 0,
        "scheduledFor": iso_ms(at),
        "error": "Generation failed: never started",
    }


# --- live text --------------------------------------------------------------------------------


async def test_live_text_is_read_for_a_processing_job_only(
    store: Store, queue: GenerationQueue, s: Settings, redis: Any, dead: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    live = RedisLiveText(redis, f"{s.queue_prefix}:smartgen")
    job = await submit(store, queue, s, None)
    await live.append(job.job_id, "Step 1: flour", first=True)
    assert await control.live_text(live=live, job=job) is None  # queued: nothing live
    assert await store.jobs.mark_processing(job.job_id, at=utcnow(), attempt=1)
    running = await store.jobs.get(job.job_id)
    assert running is not None
    assert await control.live_text(live=live, job=running) == "Step 1: flour"
    unreachable = redis_client(dead, "request")
    try:
        with caplog.at_level(logging.DEBUG, logger="smartgen.generation.control"):
            text = await control.live_text(live=RedisLiveText(unreachable, "x"), job=running)
    finally:
        await unreachable.aclose()
    assert text is None
    [record] = caplog.records
    assert record.levelname == "DEBUG"
    assert isinstance(record.args, tuple) and isinstance(record.args[1], RedisConnectionError)
    assert record.getMessage() == f"job {job.job_id}: live text unavailable: {record.args[1]}"


# --- budgets: the warning past 80 %, and a job's options in its quote -------------------------


def warned(user_id: str, s: Settings, used_tokens: int) -> list[tuple[str, str, dict[str, Any]]]:
    limit = s.user_monthly_token_budget
    _, resets = budget.month_bounds(utcnow())
    return [
        (
            user_id,
            "budget_warning",
            {
                "budget": "tokens",
                "limit": limit,
                "used": used_tokens,
                "percent": round(100 * used_tokens / limit, 1),
                "month": month_of(utcnow()),
                "resetsAt": iso_ms(resets),
            },
        )
    ]


async def test_a_new_prompt_that_takes_the_budget_past_80_percent_warns(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets
) -> None:
    longer = PROMPT + ", step by step, with every detail of the dough " * 40
    first, second = await quoted_tokens(s), await quoted_tokens(s, longer)
    near = s.model_copy(update={"user_monthly_token_budget": second + 10})
    assert first < 0.8 * (second + 10) <= second
    job = await submit(store, queue, near, budgets)
    notes = Notes()
    await control.update_job(
        store=store, queue=queue, notifier=notes, settings=near, user_id=job.user_id,
        job_id=job.job_id, prompt=longer, budgets=budgets,
    )  # fmt: skip
    assert notes.user_events == warned(job.user_id, near, second)


async def test_a_retry_that_takes_the_budget_past_80_percent_warns(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets
) -> None:
    tokens = await quoted_tokens(s)
    near = s.model_copy(update={"user_monthly_token_budget": tokens + 10})
    job = await ended(store, await submit(store, queue, s, None), JobStatus.failed)
    notes = Notes()
    await control.retry_job(
        store=store, queue=queue, notifier=notes, settings=near, user_id=job.user_id,
        job_id=job.job_id, budgets=budgets,
    )  # fmt: skip
    assert notes.user_events == warned(job.user_id, near, tokens)


async def test_a_retry_is_quoted_with_the_jobs_options(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets
) -> None:
    options = {"length": "short"}
    queued = await service.queue_generation(
        store=store, queue=queue, notifier=Notes(), settings=s, user_id=uuid.uuid4().hex[:24],
        prompt=PROMPT, content_type=TYPE, options=options,
    )  # fmt: skip
    job = await ended(store, queued.job, JobStatus.failed)
    await control.retry_job(
        store=store, queue=queue, notifier=Notes(), settings=s, user_id=job.user_id,
        job_id=job.job_id, budgets=budgets,
    )  # fmt: skip
    short = await budget.quote(s, None, model_request(TYPE, PROMPT, options))
    assert short.tokens != await quoted_tokens(s)  # the options count
    assert await used(budgets, job.user_id) == short.tokens


async def test_a_new_prompt_is_quoted_with_the_jobs_options_and_prices(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets
) -> None:
    options = {"length": "short"}
    priced = s.model_copy(update={"user_monthly_cost_budget": 100.0})
    queued = await service.queue_generation(
        store=store, queue=queue, notifier=Notes(), settings=priced,
        user_id=uuid.uuid4().hex[:24], prompt=PROMPT, content_type=TYPE, options=options,
        budgets=budgets, prices=FixedPrices(),
    )  # fmt: skip
    job = queued.job
    other = "How to bake rye bread"
    await control.update_job(
        store=store, queue=queue, notifier=Notes(), settings=priced, user_id=job.user_id,
        job_id=job.job_id, prompt=other, budgets=budgets, prices=FixedPrices(),
    )  # fmt: skip
    short = await budget.quote(priced, FixedPrices(), model_request(TYPE, other, options))
    assert short.tokens != await quoted_tokens(s, other)  # the options count
    assert short.cost is not None and short.cost > 0
    tokens, cost = await budgets.used(job.user_id, month_of(utcnow()))
    assert (tokens, cost) == (short.tokens, pytest.approx(short.cost, abs=1e-9))
