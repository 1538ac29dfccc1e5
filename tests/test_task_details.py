"""The worker's task (`generation/tasks.py`) one delivery at a time, in process: a real
SQLite store, the private Redis (event log, live text, timings, budgets, the cancel
channel, the webhook queue), the fake model server over HTTP, and the worker's notifier
(webhooks, job metrics, the event publisher). No API, no worker and no generation queue:
each test hands the task a `Delivery` as the queue runner would and checks what it left
behind, in the store, the user's event log, Redis and the webhook deliveries, and what it
told the queue (its return value or the exception the runner turns into a retry, a later
run or a final failure). Faults are real where they can be (a Redis that does not
answer); a store that refuses writes is its method replaced, as in test_readme_claims.py.

Fast (no server processes, no fixed sleeps: 39 tests in about 8 s), so that mutation
testing can run them for every mutant (bench/mutation.py generation-tasks)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from smartgen.config import Settings
from smartgen.errors import StoreUnavailable
from smartgen.generation import tasks
from smartgen.generation.budget import month_of
from smartgen.generation.prompts import system_message
from smartgen.generation.tasks import INTERNAL_FAILURE, GenerationTask
from smartgen.kit.times import utcnow
from smartgen.llm.client import ChatClient
from smartgen.metrics.jobs import MeteredNotifier
from smartgen.models import Batch, Completion, Job, JobStatus, User
from smartgen.ports import Delivery, GiveUp, RetryLater, RunLater
from smartgen.queue.budgets import RedisBudgets
from smartgen.queue.cancellations import CancelListener
from smartgen.queue.producer import cancel_channel
from smartgen.queue.timings import RedisTimings
from smartgen.queue.webhooks import BullWebhookQueue
from smartgen.realtime.bus import event_log
from smartgen.realtime.events import EventPublisher
from smartgen.realtime.live_text import RedisLiveText
from smartgen.realtime.log import EventLog
from smartgen.redis_clients import redis_client
from smartgen.server.worker import cancelled_in
from smartgen.store import open_store
from smartgen.store.base import Store
from smartgen.webhooks.endpoints import CachedEndpoints
from smartgen.webhooks.notifier import WebhookNotifier, job_event_data
from tests.fakellm import FakeLLM, Reply
from tests.fakellm import default_content as fake_answer

KIND = "Blog Post Outline"
TOKEN_BUDGET = 50  # the fake model's answers use 46 tokens: past 80 % of it


@dataclass
class RecordedTurns:
    """`ports.BatchTurns` as seen from the task: which batches it told that a job ended
    (the batch runner itself is tested in tests/test_batch_runner.py)."""

    batches: list[str | None] = field(default_factory=list)

    async def next_turns(self, batch_id: str) -> None:
        self.batches.append(batch_id)


@dataclass
class World:
    settings: Settings
    store: Store
    redis: Any
    publisher: EventPublisher
    live: RedisLiveText
    timings: RedisTimings
    budgets: RedisBudgets
    cancels: CancelListener
    turns: RecordedTurns
    llm: ChatClient
    user_id: str
    notifier: WebhookNotifier  # the worker's: job metrics and webhooks around the publisher
    kept: list[dict[str, Any]] = field(default_factory=list)  # what deliveries kept

    def task(self, **changes: Any) -> GenerationTask:
        parts: dict[str, Any] = {
            "store": self.store,
            "llm": self.llm,
            "notifier": self.notifier,
            "settings": self.settings,
            "live": self.live,
            "cancellations": self.cancels,
            "timings": self.timings,
            "budgets": self.budgets,
            "turns": self.turns,
        }
        return GenerationTask(**{**parts, **changes})

    def delivery(
        self,
        job_id: str,
        *,
        attempt: int = 1,
        attempts: int = 3,
        data: dict[str, Any] | None = None,
        message_id: str = "message-1",
    ) -> Delivery:
        async def keep(new: dict[str, Any]) -> None:
            self.kept.append(new)

        return Delivery(
            message_id=message_id,
            data={"jobId": job_id} if data is None else data,
            attempt=attempt,
            attempts=attempts,
            keep=keep,
            worker="worker-1",
        )

    async def job(self, prompt: str, *, user_id: str | None = None, **fields: Any) -> Job:
        now = utcnow()
        job = Job(
            job_id=str(uuid.uuid4()),
            user_id=user_id or self.user_id,
            status=JobStatus.queued,
            prompt=prompt,
            content_type=KIND,
            scheduled_for=now - timedelta(seconds=1),
            created_at=now,
            updated_at=now,
        )
        job = replace(job, **fields)
        assert await self.store.jobs.create(job)
        return job

    async def batch(self, batch_id: str, *prompts: str) -> list[Job]:
        """A batch's jobs, let into the queue (not waiting their turn)."""
        now = utcnow()
        jobs = [
            Job(
                job_id=str(uuid.uuid4()), user_id=self.user_id, status=JobStatus.queued,
                prompt=prompt, content_type=KIND, scheduled_for=now - timedelta(seconds=1),
                created_at=now, updated_at=now, batch_id=batch_id, batch_row=row,
            )
            for row, prompt in enumerate(prompts, start=1)
        ]  # fmt: skip
        batch = Batch(
            batch_id=batch_id, user_id=self.user_id, status="running", total=len(jobs),
            accepted=len(jobs), rejected=[], created_at=now, updated_at=now,
        )  # fmt: skip
        await self.store.batches.create(batch, jobs)
        return jobs

    async def stored(self, job_id: str) -> Job:
        job = await self.store.jobs.get(job_id)
        assert job is not None
        return job

    async def events(self, user_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The user's event log, once everything announced so far is in it."""
        await self.publisher.close()  # sends what is pending; the next event starts it again
        log = event_log(self.settings, self.redis)
        replay = await log.read(user_id or self.user_id, 0, limit=1000)
        return [(e.event, e.data) for e in replay.events]

    async def reserve(self, job_id: str, tokens: int = 10) -> None:
        state = await self.budgets.reserve(
            user_id=self.user_id, job_id=job_id, month=month_of(utcnow()), tokens=tokens,
            cost=0.0, token_limit=TOKEN_BUDGET, cost_limit=0.0,
        )  # fmt: skip
        assert state.accepted

    async def used_tokens(self) -> int:
        return (await self.budgets.used(self.user_id, month_of(utcnow())))[0]


@contextlib.asynccontextmanager
async def unlogged_publisher() -> AsyncIterator[EventPublisher]:
    """A publisher whose event log is on a Redis that does not answer (nothing listens on
    port 1): announcements that must be logged (`settled`) raise."""
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))

    async def emit(events: list[Any]) -> None:
        raise AssertionError("nothing is sent before it is logged")

    log = EventLog(dead, "nowhere", max_events=10, max_age_seconds=60)
    publisher = EventPublisher(emit, numbering=log)
    try:
        yield publisher
    finally:
        await publisher.close()
        await dead.aclose()


@pytest.fixture
def store_kind() -> str:
    """SQLite, the default store (the store's own behaviour has tests/test_store_contract.py)."""
    return "sqlite"


@pytest.fixture
async def world(settings: Settings, unique: str) -> AsyncIterator[World]:
    s = settings.model_copy(
        update={
            "progress_interval_seconds": 0.05,
            "user_monthly_token_budget": TOKEN_BUDGET,
        }
    )
    store = open_store(s)
    await store.init()
    redis = redis_client(s, "request")
    namespace = f"{s.queue_prefix}:smartgen"
    sent: list[Any] = []

    async def emit(events: list[Any]) -> None:  # the bus's side: tests read the log
        sent.extend(events)

    publisher = EventPublisher(emit, numbering=event_log(s, redis))
    signals = redis_client(s, "pubsub")
    cancels = CancelListener(signals, cancel_channel(s), is_cancelled=cancelled_in(store))
    cancels.start()
    await asyncio.wait_for(cancels.subscribed.wait(), 10)
    user_id = f"user-{unique}"
    await store.users.create(User(user_id, f"{unique}@example.com", "x", utcnow()))
    llm = ChatClient(s)
    webhook_queue = BullWebhookQueue(s, redis_client(s, "request"))
    notifier = WebhookNotifier(
        MeteredNotifier(publisher), store=store, queue=webhook_queue,
        endpoints=CachedEndpoints(store, webhook_queue),
    )  # fmt: skip
    try:
        yield World(
            settings=s, store=store, redis=redis, publisher=publisher,
            live=RedisLiveText(redis, namespace), timings=RedisTimings(redis, namespace),
            budgets=RedisBudgets(redis, namespace), cancels=cancels, turns=RecordedTurns(),
            llm=llm, user_id=user_id, notifier=notifier,
        )  # fmt: skip
    finally:
        await webhook_queue.close()
        await publisher.close()
        await cancels.close()
        await llm.close()
        await signals.aclose()
        await redis.aclose()
        await store.close()


def default_content(prompt: str) -> str:
    """The fake model's answer to `prompt`, as stored (the client trims the ends)."""
    return fake_answer(prompt).strip()


def jobs_counted(state: str) -> float:
    """smartgen_jobs_total for the tests' content type and `state`, as /metrics shows it."""
    value = REGISTRY.get_sample_value("smartgen_jobs_total", {"content_type": KIND, "state": state})
    return value or 0.0


def statuses(events: list[tuple[str, dict[str, Any]]], job_id: str) -> list[str]:
    return [d["status"] for e, d in events if e == "job_status" and d["jobId"] == job_id]


def named(events: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return [d for e, d in events if e == name]


# --- a delivery that runs the job ----------------------------------------------------------


async def test_a_delivery_generates_stores_and_announces_the_job(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[whole-{unique}]"
    # Slow enough that the text goes out as job_progress events while it is written.
    fake_llm.script(marker, [Reply(chunk_delay=0.02)])
    job = await world.job(f"Sourdough {marker}", options={"audience": "home bakers"})
    await world.reserve(job.job_id)
    assert await world.used_tokens() == 10
    counted = jobs_counted("completed")

    assert await world.task()(world.delivery(job.job_id)) == "completed"
    assert jobs_counted("completed") == counted + 1

    content = default_content(f"Sourdough {marker}")
    done = await world.stored(job.job_id)
    assert done.status == JobStatus.completed
    assert done.generated_content == content
    assert done.model == "fake/model-1"
    assert done.usage == {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}
    assert done.finish_reason is None  # the fake model's stream does not say
    assert done.attempts == 1
    assert done.started_at is not None and done.completed_at is not None
    assert done.started_at <= done.completed_at
    assert done.error is None
    [call] = fake_llm.calls_for(marker)
    assert call.prompt == f"Sourdough {marker}"
    assert call.system == system_message(KIND, {"audience": "home bakers"})
    assert "<audience>home bakers</audience>" in call.user
    assert "<previous_version>" not in call.user

    events = await world.events()
    assert statuses(events, job.job_id) == ["processing", "completed"]
    [completed] = named(events, "job_completed")
    assert completed["generatedContent"] == content
    # The final job_status is stamped with the moment it ended, not when it started (the
    # text took a while to stream: not the same millisecond).
    end = [d for e, d in events if e == "job_status" and d["status"] == "completed"]
    assert [d["at"] for d in end] == [completed["completedAt"]]
    assert completed["completedAt"].startswith(done.completed_at.strftime("%Y-%m-%dT%H:%M:%S"))
    progress = named(events, "job_progress")
    assert len(progress) >= 2
    # The deltas add up to the text as written (the content is that text, trimmed), each
    # with the length written so far, in order.
    written = fake_answer(f"Sourdough {marker}")
    assert "".join(p["delta"] for p in progress) == written
    lengths = [p["length"] for p in progress]
    assert lengths[-1] == len(written)
    so_far = [len("".join(p["delta"] for p in progress[: i + 1])) for i in range(len(progress))]
    assert lengths == so_far and all(p["delta"] for p in progress)
    # The first piece of a run starts the text (whatever an earlier run left is void).
    assert [bool(p.get("reset")) for p in progress] == [True] + [False] * (len(progress) - 1)
    # The order: processing, the text, then the final state.
    order = [e for e, _ in events if e != "budget_warning"]
    assert order[0] == "job_status" and order[-2:] == ["job_status", "job_completed"]

    # The live text served while it ran is gone; its duration is recorded; the budget
    # holds what the job really used (46 of 50 tokens: a budget_warning).
    assert await world.live.get(job.job_id) is None
    typical = await world.timings.typical_seconds(KIND)
    assert typical is not None and 0 <= typical < 60
    assert await world.used_tokens() == 46
    [warning] = named(events, "budget_warning")
    assert warning["budget"] == "tokens" and warning["used"] == 46
    assert world.turns.batches == []  # not a batch's job
    assert world.kept == []


async def test_text_written_within_the_first_interval_sends_no_progress(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    """An answer that comes whole within PROGRESS_INTERVAL_SECONDS is announced only by
    the job's final state; no live text is kept for it."""
    task = world.task(settings=world.settings.model_copy(update={"progress_interval_seconds": 10}))
    job = await world.job(f"Quick [fast-{unique}]")
    appended: list[str] = []
    original = world.live.append

    async def watched(job_id: str, text: str, *, first: bool = False) -> None:
        appended.append(text)
        await original(job_id, text, first=first)

    world.live.append = watched  # type: ignore[method-assign]
    assert await task(world.delivery(job.job_id)) == "completed"
    events = await world.events()
    assert named(events, "job_progress") == []
    assert appended == []
    assert statuses(events, job.job_id) == ["processing", "completed"]


async def test_live_text_holds_the_text_so_far_while_the_job_runs(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[live-{unique}]"
    fake_llm.script(marker, [Reply(chunk_delay=0.1)])
    job = await world.job(f"Slowly {marker}")
    content = fake_answer(f"Slowly {marker}")
    run = asyncio.create_task(world.task()(world.delivery(job.job_id)))
    seen: list[str] = []
    while not run.done():
        text = await world.live.get(job.job_id)
        if text:
            seen.append(text)
        await asyncio.sleep(0.05)
    assert await run == "completed"
    assert seen, "the live text was never there while the job ran"
    for text in seen:  # always a beginning of the answer, never a later run's or a mix
        assert content.startswith(text)
    assert await world.live.get(job.job_id) is None


async def test_a_job_without_live_text_timings_budgets_or_turns_still_completes(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[bare-{unique}]"
    fake_llm.script(marker, [Reply(chunk_delay=0.02)])
    job = await world.job(f"Bare {marker}")
    await world.reserve(job.job_id)
    task = world.task(live=None, cancellations=None, timings=None, budgets=None, turns=None)
    assert await task(world.delivery(job.job_id)) == "completed"
    assert (await world.stored(job.job_id)).status == JobStatus.completed
    assert await world.live.get(job.job_id) is None
    assert await world.timings.typical_seconds(KIND) is None
    assert await world.used_tokens() == 10  # nobody settled it
    events = await world.events()
    assert "".join(p["delta"] for p in named(events, "job_progress")) == fake_answer(
        f"Bare {marker}"
    )


async def test_budgets_off_leave_the_reservation_as_it_is(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    job = await world.job(f"No budget [nobudget-{unique}]")
    await world.reserve(job.job_id)
    off = world.settings.model_copy(update={"user_monthly_token_budget": 0})
    assert await world.task(settings=off)(world.delivery(job.job_id)) == "completed"
    assert await world.used_tokens() == 10
    assert named(await world.events(), "budget_warning") == []


async def test_a_cost_reported_by_the_model_is_the_jobs_cost_and_settles_the_budget(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[cost-{unique}]"
    fake_llm.script(marker, [Reply(cost=0.25)])
    job = await world.job(f"Priced {marker}")
    await world.reserve(job.job_id)
    assert await world.task()(world.delivery(job.job_id)) == "completed"
    assert (await world.stored(job.job_id)).cost == 0.25
    tokens, cost = await world.budgets.used(world.user_id, month_of(utcnow()))
    assert (tokens, cost) == (46, 0.25)


async def test_the_job_id_comes_from_the_message_when_its_data_has_none(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    job = await world.job(f"Old message [noid-{unique}]")
    delivery = world.delivery(job.job_id, data={}, message_id=job.job_id)
    assert await world.task()(delivery) == "completed"
    done = await world.stored(job.job_id)
    assert done.status == JobStatus.completed and done.prompt == f"Old message [noid-{unique}]"


async def test_a_variation_is_asked_to_differ_from_its_originals_text(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    original = await world.job(f"Original [orig-{unique}]")
    assert await world.task()(world.delivery(original.job_id)) == "completed"
    text = (await world.stored(original.job_id)).generated_content
    assert text
    marker = f"[variation-{unique}]"
    variation = await world.job(f"Again {marker}", parent_job_id=original.job_id)
    assert await world.task()(world.delivery(variation.job_id)) == "completed"
    [call] = fake_llm.calls_for(marker)
    assert f"<previous_version>\n{text.strip()}" in call.user

    # Another user's job as the "original": its text never reaches the model.
    other = f"other-{unique}"
    theirs = await world.job(f"Theirs [theirs-{unique}]", user_id=other)
    assert await world.task()(world.delivery(theirs.job_id)) == "completed"
    marker = f"[stolen-{unique}]"
    stolen = await world.job(f"Steal {marker}", parent_job_id=theirs.job_id)
    assert await world.task()(world.delivery(stolen.job_id)) == "completed"
    [call] = fake_llm.calls_for(marker)
    assert "<previous_version>" not in call.user
    # An original that no longer exists: none either.
    marker = f"[orphan-{unique}]"
    orphan = await world.job(f"Orphan {marker}", parent_job_id=str(uuid.uuid4()))
    assert await world.task()(world.delivery(orphan.job_id)) == "completed"
    [call] = fake_llm.calls_for(marker)
    assert "<previous_version>" not in call.user


async def test_a_batch_job_that_ends_lets_its_batch_take_its_next_turn(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    bad = f"[batchfail-{unique}]"
    fake_llm.always(bad, Reply(status=400))
    [ok] = await world.batch("batch-1", f"Row one [batchok-{unique}]")
    [failing] = await world.batch("batch-2", f"Row two {bad}")
    assert await world.task()(world.delivery(ok.job_id)) == "completed"
    assert world.turns.batches == ["batch-1"]
    with pytest.raises(GiveUp):
        await world.task()(world.delivery(failing.job_id))
    assert world.turns.batches == ["batch-1", "batch-2"]
    # A delivery that finds it already ended tells the batch again (a crash in between).
    assert await world.task()(world.delivery(ok.job_id)) == "already completed"
    assert await world.task()(world.delivery(failing.job_id)) == "already failed"
    assert world.turns.batches == ["batch-1", "batch-2", "batch-1", "batch-2"]


# --- the model fails ------------------------------------------------------------------------


async def test_a_retryable_error_gives_the_job_back_for_a_retry(
    world: World, fake_llm: FakeLLM, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"[busy-{unique}]"
    fake_llm.script(marker, [Reply(status=429, headers={"Retry-After": "7"})])
    job = await world.job(f"Busy {marker}")
    await world.reserve(job.job_id)
    with caplog.at_level("INFO", logger=tasks.__name__), pytest.raises(RetryLater) as raised:
        await world.task()(world.delivery(job.job_id, attempt=1, attempts=3))
    assert raised.value.retry_after == 7
    assert "429" in str(raised.value)
    assert [r.getMessage() for r in caplog.records if r.name == tasks.__name__] == [
        f"job {job.job_id} attempt 1: {raised.value} (will retry)"
    ]
    held = await world.stored(job.job_id)
    assert held.status == JobStatus.processing
    assert held.lease_until is None  # released for the retry
    assert held.lease_owner == "message-1@worker-1"
    assert held.error is None and held.failed_at is None
    assert await world.used_tokens() == 10  # still reserved: the job goes on
    assert statuses(await world.events(), job.job_id) == ["processing"]

    # Another message (another owner) may take it at once, and completes it.
    other = world.delivery(job.job_id, attempt=2, message_id="message-2")
    assert await world.task()(other) == "completed"
    assert (await world.stored(job.job_id)).attempts == 2


async def test_a_retryable_error_on_the_last_attempt_fails_the_job_for_good(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[down-{unique}]"
    fake_llm.always(marker, Reply(status=500))
    job = await world.job(f"Down {marker}")
    await world.reserve(job.job_id)
    with pytest.raises(GiveUp) as raised:
        await world.task()(world.delivery(job.job_id, attempt=3, attempts=3))
    message = "Generation failed: the model provider answered HTTP 500: fake upstream error 500"
    assert str(raised.value) == message
    failed = await world.stored(job.job_id)
    assert failed.status == JobStatus.failed
    assert failed.error == message
    assert failed.failed_at is not None and failed.generated_content is None
    assert await world.used_tokens() == 0  # the reservation is given back
    events = await world.events()
    assert statuses(events, job.job_id) == ["processing", "failed"]
    [announced] = named(events, "job_failed")
    assert announced["error"] == message and announced["jobId"] == job.job_id


async def test_a_take_over_after_a_worker_died_mid_stream_starts_the_text_again(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    """A worker SIGKILLed mid-stream never says its text is void: the live text it kept
    stays, and clients hold the pieces it announced. The run that takes the job over
    starts the text again: its first piece carries `reset`, so the clients' deltas add up
    to its text alone, and its live text replaces the dead run's. If its own stream breaks
    before it announced anything, the dead run's text is cleared all the same."""
    marker = f"[takeover-{unique}]"
    fake_llm.script(marker, [Reply(chunk_delay=0.03, break_after=1), Reply(chunk_delay=0.02)])
    job = await world.job(f"Taken over {marker}")
    await world.live.append(job.job_id, "the dead run's words", first=True)
    # The take-over's stream breaks at once: nothing of it announced, the dead run's text
    # cleared (GET would show it as partialContent while the job waits for its retry).
    with pytest.raises(RetryLater):
        await world.task()(world.delivery(job.job_id, attempt=2, attempts=3))
    assert await world.live.get(job.job_id) is None
    assert named(await world.events(), "job_progress") == []
    # The dead run's text again, then a take-over that streams to the end.
    await world.live.append(job.job_id, "the dead run's words", first=True)
    seen: list[str] = []

    async def watch() -> None:
        while not seen or seen[-1] == "the dead run's words":
            text = await world.live.get(job.job_id)
            if text is not None and (not seen or text != seen[-1]):
                seen.append(text)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    assert await world.task()(world.delivery(job.job_id, attempt=3, attempts=3)) == "completed"
    await asyncio.wait_for(watcher, 5)
    written = fake_answer(f"Taken over {marker}")
    assert seen[0] == "the dead run's words" and written.startswith(seen[-1])  # replaced
    progress = named(await world.events(), "job_progress")
    assert [bool(p.get("reset")) for p in progress] == [True] + [False] * (len(progress) - 1)
    assert "".join(p["delta"] for p in progress) == written


async def test_a_refused_request_fails_at_the_first_attempt(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[refused-{unique}]"
    fake_llm.always(marker, Reply(status=402, json_body={"error": {"message": "No credits"}}))
    job = await world.job(f"Refused {marker}")
    with pytest.raises(GiveUp) as raised:
        await world.task()(world.delivery(job.job_id, attempt=1, attempts=3))
    assert str(raised.value).startswith("Generation failed: ")
    failed = await world.stored(job.job_id)
    assert failed.status == JobStatus.failed and failed.error == str(raised.value)
    assert len(fake_llm.calls_for(marker)) == 1


async def test_a_stream_that_breaks_takes_back_the_text_it_announced(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[broken-{unique}]"
    fake_llm.script(marker, [Reply(chunk_delay=0.03, break_after=8), Reply(chunk_delay=0.02)])
    job = await world.job(f"Broken stream {marker}")
    with pytest.raises(RetryLater):
        await world.task()(world.delivery(job.job_id, attempt=1, attempts=3))
    assert await world.live.get(job.job_id) is None  # no partial text left to show
    events = await world.events()
    progress = named(events, "job_progress")
    assert len(progress) >= 2
    *partial, reset = progress
    assert [bool(p.get("reset")) for p in partial] == [True] + [False] * (len(partial) - 1)
    assert partial[-1]["length"] > 0
    assert reset == {
        "userId": world.user_id, "jobId": job.job_id, "delta": "", "length": 0, "reset": True
    }  # fmt: skip
    held = await world.stored(job.job_id)
    assert held.status == JobStatus.processing and held.generated_content is None

    # The retry starts again from nothing: its deltas alone add up to the content.
    assert await world.task()(world.delivery(job.job_id, attempt=2)) == "completed"
    after = named(await world.events(), "job_progress")[len(progress) :]
    assert "".join(p["delta"] for p in after) == fake_answer(f"Broken stream {marker}")
    assert after[0]["length"] == len(after[0]["delta"])


async def test_a_stream_that_breaks_before_any_text_was_announced_sends_no_reset(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[early-{unique}]"
    fake_llm.script(marker, [Reply(break_after=3)])
    job = await world.job(f"Early break {marker}")
    task = world.task(settings=world.settings.model_copy(update={"progress_interval_seconds": 10}))
    with pytest.raises(RetryLater):
        await task(world.delivery(job.job_id))
    assert named(await world.events(), "job_progress") == []


# --- the job is cancelled meanwhile ---------------------------------------------------------


async def test_a_cancel_while_generating_stops_the_model_and_keeps_nothing(
    world: World, fake_llm: FakeLLM, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"[cancel-{unique}]"
    fake_llm.script(marker, [Reply(chunk_delay=0.1)])
    job = await world.job(f"Cancelled {marker}")
    run = asyncio.create_task(world.task()(world.delivery(job.job_id)))
    for _ in range(200):  # until some text is live
        if await world.live.get(job.job_id):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the job never wrote live text")
    # While it runs, this message holds the job for LLM_TIMEOUT_SECONDS + 15 s.
    running = await world.stored(job.job_id)
    assert running.status == JobStatus.processing
    assert running.lease_owner == "message-1@worker-1"
    assert running.started_at is not None and running.lease_until is not None
    held = (running.lease_until - running.started_at).total_seconds()
    assert held == world.settings.lease_seconds == 20
    assert await world.store.jobs.cancel(job.job_id, world.user_id, at=utcnow())
    with caplog.at_level("INFO", logger=tasks.__name__):
        await world.redis.publish(cancel_channel(world.settings), job.job_id)
        assert await asyncio.wait_for(run, 10) == "cancelled"
    assert [r.getMessage() for r in caplog.records if r.name == tasks.__name__] == [
        f"job {job.job_id} cancelled while generating"
    ]
    cancelled = await world.stored(job.job_id)
    assert cancelled.status == JobStatus.cancelled and cancelled.generated_content is None
    assert await world.live.get(job.job_id) is None
    assert statuses(await world.events(), job.job_id) == ["processing"]
    assert world.turns.batches == []


# --- a delivery that does not take the job --------------------------------------------------


async def test_a_delivery_of_an_unknown_job_is_dropped(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = str(uuid.uuid4())
    with caplog.at_level("INFO", logger=tasks.__name__):
        assert await world.task()(world.delivery(job_id)) == "missing"
    assert [r.getMessage() for r in caplog.records if r.name == tasks.__name__] == [
        f"job {job_id} is not in the store; dropping it"
    ]


async def test_a_delivery_may_be_up_to_two_seconds_early(world: World, unique: str) -> None:
    """Seen from a delivery that could not take the job: a queued job due within 2 s of
    the delivery's clock is not "later" (clock skew); one due after that runs later."""
    job = await world.job(f"Skewed [skew-{unique}]")
    task = world.task()
    with pytest.raises(RetryLater):
        await task._not_taken(job.job_id, job.scheduled_for - timedelta(seconds=1.9), False)
    with pytest.raises(RunLater) as raised:
        await task._not_taken(job.job_id, job.scheduled_for - timedelta(seconds=2.1), False)
    assert raised.value.at == job.scheduled_for


async def test_a_held_job_is_retried_after_its_lease_whatever_its_schedule(
    world: World, unique: str
) -> None:
    job = await world.job(f"Held early [heldearly-{unique}]")
    now = utcnow()
    assert await world.store.jobs.mark_processing(job.job_id, at=now, attempt=1, owner="other")
    task = world.task()
    earlier = job.scheduled_for - timedelta(seconds=60)  # a delivery long before its time
    with pytest.raises(RetryLater) as raised:
        await task._not_taken(job.job_id, earlier, False)
    # Held without a lease end (an older worker's lease): half a second, then try again.
    assert raised.value.retry_after == 0.5


async def test_a_job_rescheduled_later_runs_later(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[later-{unique}]"
    # Beyond the 2 s a delivery may be early (clock skew between hosts).
    later = utcnow() + timedelta(seconds=2.9)
    job = await world.job(f"Later {marker}", scheduled_for=later)
    with pytest.raises(RunLater) as raised:
        await world.task()(world.delivery(job.job_id))
    assert raised.value.at == later
    assert (await world.stored(job.job_id)).status == JobStatus.queued
    assert fake_llm.calls_for(marker) == []
    # Within the tolerance: it runs now.
    soon = await world.job(f"Soon [soon-{unique}]", scheduled_for=utcnow() + timedelta(seconds=1.5))
    assert await world.task()(world.delivery(soon.job_id)) == "completed"


async def test_a_job_another_delivery_holds_is_retried_after_its_lease(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[held-{unique}]"
    job = await world.job(f"Held {marker}")
    now = utcnow()
    taken = await world.store.jobs.mark_processing(
        job.job_id, at=now, attempt=1, lease_until=now + timedelta(seconds=10), owner="other"
    )
    assert taken is not None
    with pytest.raises(RetryLater) as raised:
        await world.task()(world.delivery(job.job_id, attempt=1))
    assert raised.value.retry_after is not None
    assert 9.5 < raised.value.retry_after <= 10.5  # the lease's end, and half a second
    assert str(raised.value) == "another delivery of this job is running"
    # The holder's lease is not released by the delivery that could not take the job.
    held = await world.stored(job.job_id)
    assert held.lease_owner == "other" and held.lease_until is not None
    # On its last attempt the delivery leaves the job to its holder.
    last = world.delivery(job.job_id, attempt=3, attempts=3)
    assert await world.task()(last) == "held by another delivery"
    assert fake_llm.calls_for(marker) == []
    assert (await world.stored(job.job_id)).status == JobStatus.processing


async def test_a_held_job_whose_lease_just_ended_is_retried_half_a_second_later(
    world: World, unique: str
) -> None:
    job = await world.job(f"Lapsing [lapse-{unique}]")
    now = utcnow()
    # Held by another owner until a moment from now: retried no sooner than 0.5 s.
    taken = await world.store.jobs.mark_processing(
        job.job_id, at=now, attempt=1, lease_until=now + timedelta(seconds=3), owner="other"
    )
    assert taken is not None
    task = world.task()
    with pytest.raises(RetryLater) as raised:
        await task._not_taken(job.job_id, now + timedelta(seconds=5), last_attempt=False)
    assert raised.value.retry_after == 0.5


async def test_a_redelivered_finished_job_is_announced_again_and_settled_once(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    """A worker that died after storing the final state, before the queue heard of it:
    the next delivery announces that state (the event log keeps it once) and settles or
    releases the budget, without generating again."""
    marker = f"[again-{unique}]"
    done = await world.job(f"Done {marker}")
    failed = await world.job(f"Failed [failed-{unique}]")
    await world.reserve(done.job_id, tokens=5)
    await world.reserve(failed.job_id, tokens=5)
    now = utcnow()
    usage = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    assert await world.store.jobs.mark_processing(done.job_id, at=now, attempt=1)
    assert await world.store.jobs.mark_completed(
        done.job_id, result=Completion("kept text", "fake/model-1", usage), at=now
    )
    assert await world.store.jobs.mark_failed(failed.job_id, error="it broke", at=now)
    assert await world.used_tokens() == 10
    counted = jobs_counted("completed"), jobs_counted("failed")

    assert await world.task()(world.delivery(done.job_id)) == "already completed"
    assert await world.used_tokens() == 5 + 30  # settled at what it used
    assert await world.task()(world.delivery(failed.job_id)) == "already failed"
    assert await world.used_tokens() == 30  # released
    events = await world.events()
    assert statuses(events, done.job_id) == ["completed"]
    assert [e["generatedContent"] for e in named(events, "job_completed")] == ["kept text"]
    assert [e["error"] for e in named(events, "job_failed")] == ["it broke"]

    # Again: nothing changes, nothing is announced twice.
    assert await world.task()(world.delivery(done.job_id)) == "already completed"
    assert await world.used_tokens() == 30
    assert await world.events() == events
    assert fake_llm.calls_for(marker) == []
    # Announced again, not counted again in the job metrics.
    assert (jobs_counted("completed"), jobs_counted("failed")) == counted


# --- the store fails ------------------------------------------------------------------------


def failing(times: int, calls: list[str]) -> Any:
    """A store write that fails `times` times as an unavailable store does, then works."""

    def wrap(real: Any) -> Any:
        async def write(job_id: str, **kwargs: Any) -> Any:
            calls.append(job_id)
            if len(calls) <= times:
                raise StoreUnavailable("the database did not answer")
            return await real(job_id, **kwargs)

        return write

    return wrap


async def test_a_completion_the_store_refused_for_a_moment_is_written_on_a_later_try(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[blip-{unique}]"
    job = await world.job(f"Blip {marker}")
    calls: list[str] = []
    world.store.jobs.mark_completed = failing(2, calls)(world.store.jobs.mark_completed)  # type: ignore[method-assign]
    assert await world.task()(world.delivery(job.job_id)) == "completed"
    assert calls == [job.job_id] * 3
    assert (await world.stored(job.job_id)).status == JobStatus.completed
    assert len(fake_llm.calls_for(marker)) == 1
    assert world.kept == []


async def test_a_completion_the_store_keeps_refusing_is_kept_with_the_message(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    """Past STORE_WRITE_RETRY_SECONDS the answer goes with the queue message, and the
    retry stores it without a second model call."""
    marker = f"[outage-{unique}]"
    fake_llm.script(marker, [Reply(cost=0.5)])
    job = await world.job(f"Outage {marker}")
    settings = world.settings.model_copy(update={"store_write_retry_seconds": 0.5})
    calls: list[str] = []
    real = world.store.jobs.mark_completed
    world.store.jobs.mark_completed = failing(1000, calls)(real)  # type: ignore[method-assign]
    with pytest.raises(RetryLater) as raised:
        await world.task(settings=settings)(world.delivery(job.job_id, attempt=1, attempts=3))
    assert str(raised.value) == INTERNAL_FAILURE
    # Tried again 0.2 s later; the next try (0.4 s on) would pass the 0.5 s allowed.
    assert len(calls) == 2
    content = default_content(f"Outage {marker}")
    [kept] = world.kept
    usage = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46, "cost": 0.5}
    assert kept == {
        "jobId": job.job_id,
        "result": {"content": content, "model": "fake/model-1", "usage": usage,
                   "finish_reason": None},
    }  # fmt: skip
    held = await world.stored(job.job_id)
    assert held.status == JobStatus.processing and held.lease_until is None

    world.store.jobs.mark_completed = real  # type: ignore[method-assign]
    retry = world.delivery(job.job_id, attempt=2, data=kept)
    assert await world.task()(retry) == "completed"
    done = await world.stored(job.job_id)
    assert done.generated_content == content and done.model == "fake/model-1"
    assert done.usage == usage and done.finish_reason is None and done.cost == 0.5
    assert len(fake_llm.calls_for(marker)) == 1  # not generated twice
    events = await world.events()
    assert statuses(events, job.job_id) == ["processing", "processing", "completed"]
    assert [e["generatedContent"] for e in named(events, "job_completed")] == [content]


async def test_a_kept_answer_without_a_model_or_usage_is_stored_as_it_is(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[keptbare-{unique}]"
    job = await world.job(f"Kept {marker}")
    data = {"jobId": job.job_id, "result": {"content": "From before"}}
    assert await world.task()(world.delivery(job.job_id, data=data)) == "completed"
    done = await world.stored(job.job_id)
    assert done.generated_content == "From before"
    assert done.model == "" and done.usage is None and done.finish_reason is None
    assert fake_llm.calls_for(marker) == []
    # One with everything: stored as the model gave it then.
    job = await world.job(f"Kept whole [keptwhole-{unique}]")
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    result = {"content": "Whole", "model": "m/x", "usage": usage, "finish_reason": "length"}
    data = {"jobId": job.job_id, "result": result}
    assert await world.task()(world.delivery(job.job_id, data=data)) == "completed"
    done = await world.stored(job.job_id)
    assert (done.generated_content, done.model, done.usage, done.finish_reason) == (
        "Whole",
        "m/x",
        usage,
        "length",
    )
    # A kept result without content is no answer: the model is asked.
    marker = f"[keptempty-{unique}]"
    job = await world.job(f"Empty {marker}")
    data = {"jobId": job.job_id, "result": {"content": ""}}
    assert await world.task()(world.delivery(job.job_id, data=data)) == "completed"
    assert len(fake_llm.calls_for(marker)) == 1


async def test_a_store_that_keeps_failing_on_the_last_attempt_fails_the_job(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    job = await world.job(f"Last [lastfail-{unique}]")
    await world.reserve(job.job_id)
    settings = world.settings.model_copy(update={"store_write_retry_seconds": 0})
    calls: list[str] = []
    real = world.store.jobs.mark_completed
    world.store.jobs.mark_completed = failing(1000, calls)(real)  # type: ignore[method-assign]
    with pytest.raises(GiveUp) as raised:
        await world.task(settings=settings)(world.delivery(job.job_id, attempt=3, attempts=3))
    assert str(raised.value) == INTERNAL_FAILURE
    assert isinstance(raised.value.__cause__, StoreUnavailable)
    failed = await world.stored(job.job_id)
    assert failed.status == JobStatus.failed and failed.error == INTERNAL_FAILURE
    assert await world.used_tokens() == 0
    events = await world.events()
    assert statuses(events, job.job_id) == ["processing", "failed"]
    assert [e["error"] for e in named(events, "job_failed")] == [INTERNAL_FAILURE]


async def test_a_store_down_when_the_delivery_starts_is_retried(
    world: World, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = await world.job(f"Down at start [startdown-{unique}]")
    calls: list[str] = []
    real = world.store.jobs.mark_processing
    world.store.jobs.mark_processing = failing(1, calls)(real)  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger=tasks.__name__), pytest.raises(RetryLater) as raised:
        await world.task()(world.delivery(job.job_id, attempt=1, attempts=3))
    assert str(raised.value) == INTERNAL_FAILURE
    assert isinstance(raised.value.__cause__, StoreUnavailable)
    assert [r.getMessage() for r in caplog.records if r.name == tasks.__name__] == [
        f"job {job.job_id} attempt 1 failed: StoreUnavailable"
    ]
    assert (await world.stored(job.job_id)).status == JobStatus.queued
    assert await world.task()(world.delivery(job.job_id, attempt=2)) == "completed"


async def test_a_failure_the_store_cannot_record_is_logged_not_raised(
    world: World, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = await world.job(f"Unrecordable [norecord-{unique}]")

    async def refuse(job_id: str, **kwargs: Any) -> bool:
        raise StoreUnavailable("the database did not answer")

    world.store.jobs.mark_failed = refuse  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger=tasks.__name__):
        await world.task()._fail(job.job_id, "Generation failed: x")
    assert [r.getMessage() for r in caplog.records] == [
        f"job {job.job_id}: could not record failure (store unavailable)"
    ]
    assert (await world.stored(job.job_id)).status == JobStatus.queued


async def test_a_failure_written_but_not_announced_is_logged_not_raised(
    world: World, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The failure is recorded; its announcement waits until it is in the event log, and
    an event log that does not answer is logged, not raised."""
    job = await world.job(f"Unannounced [noannounce-{unique}]")
    async with unlogged_publisher() as publisher:
        with caplog.at_level("WARNING", logger=tasks.__name__):
            await world.task(notifier=publisher)._fail(job.job_id, "Generation failed: x")
    assert [r.getMessage() for r in caplog.records if r.name == tasks.__name__] == [
        f"job {job.job_id}: failure not announced: ConnectionError"
    ]
    assert (await world.stored(job.job_id)).status == JobStatus.failed


async def test_a_final_state_that_could_not_be_announced_is_retried(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    """The queue hears that a job is done only once its final state is in the event log:
    else the message is retried, and its next delivery announces it."""
    marker = f"[unannounced-{unique}]"
    job = await world.job(f"Quiet {marker}")
    async with unlogged_publisher() as publisher:
        with pytest.raises(RetryLater) as raised:
            await world.task(notifier=publisher)(world.delivery(job.job_id))
        assert str(raised.value) == INTERNAL_FAILURE
        assert (await world.stored(job.job_id)).status == JobStatus.completed
        # A redelivery that finds it done cannot announce it either: retried again.
        with pytest.raises(RetryLater):
            await world.task(notifier=publisher)(world.delivery(job.job_id, attempt=2))
    assert await world.task()(world.delivery(job.job_id, attempt=3)) == "already completed"
    events = await world.events()
    assert statuses(events, job.job_id) == ["completed"]
    assert len(named(events, "job_completed")) == 1
    assert len(fake_llm.calls_for(marker)) == 1


async def test_a_lease_that_cannot_be_released_runs_out_by_itself(
    world: World, fake_llm: FakeLLM, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"[norelease-{unique}]"
    fake_llm.script(marker, [Reply(status=503)])
    job = await world.job(f"Stuck lease {marker}")

    async def refuse(job_id: str, **kwargs: Any) -> bool:
        raise StoreUnavailable("the database did not answer")

    world.store.jobs.release_lease = refuse  # type: ignore[method-assign]
    with caplog.at_level("DEBUG", logger=tasks.__name__), pytest.raises(RetryLater) as raised:
        await world.task()(world.delivery(job.job_id))
    assert "503" in str(raised.value)  # the model's error, not the store's
    assert f"job {job.job_id}: lease not released: StoreUnavailable" in [
        r.getMessage() for r in caplog.records
    ]
    assert (await world.stored(job.job_id)).lease_until is not None  # until it runs out


async def test_a_new_run_replaces_the_live_text_a_crashed_run_left(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[stale-{unique}]"
    fake_llm.script(marker, [Reply(chunk_delay=0.1)])
    job = await world.job(f"Fresh {marker}")
    await world.live.append(job.job_id, "text of a run that died ", first=True)
    run = asyncio.create_task(world.task()(world.delivery(job.job_id)))
    seen: list[str] = []
    while not run.done():
        text = await world.live.get(job.job_id)
        if text and text != "text of a run that died ":
            seen.append(text)
        await asyncio.sleep(0.05)
    assert await run == "completed"
    assert seen
    content = fake_answer(f"Fresh {marker}")
    assert all(content.startswith(text) for text in seen), seen


async def test_live_text_that_cannot_be_kept_does_not_stop_the_job(
    world: World, fake_llm: FakeLLM, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Live text is a courtesy: a Redis that does not answer (nothing listens on port 1)
    costs the job its live text, not its result."""
    client = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    marker = f"[nolive-{unique}]"
    fake_llm.script(marker, [Reply(chunk_delay=0.03)])
    job = await world.job(f"No live text {marker}")
    try:
        task = world.task(live=RedisLiveText(client, "nowhere"))
        with caplog.at_level("DEBUG", logger=tasks.__name__):
            assert await task(world.delivery(job.job_id)) == "completed"
    finally:
        await client.aclose()
    assert (await world.stored(job.job_id)).generated_content == default_content(
        f"No live text {marker}"
    )
    lines = [r.getMessage() for r in caplog.records if r.name == tasks.__name__]
    assert lines, "the lost live text was not logged"
    for line in lines:  # the job, and why
        assert line.startswith(f"job {job.job_id}: live text not kept: "), line
        assert "127.0.0.1:1" in line, line
    # Each piece is tried again (the next one may get through): one line per announcement.
    progress = named(await world.events(), "job_progress")
    assert len(lines) == len(progress) >= 2


async def test_a_budget_that_cannot_be_settled_never_fails_the_job(
    world: World, fake_llm: FakeLLM, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger on a Redis that does not answer: the job completes and says why its
    budget was not settled."""
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    job = await world.job(f"Unsettled [unsettled-{unique}]")
    try:
        task = world.task(budgets=RedisBudgets(dead, "nowhere"))
        with caplog.at_level("WARNING", logger=tasks.__name__):
            assert await task(world.delivery(job.job_id)) == "completed"
    finally:
        await dead.aclose()
    assert (await world.stored(job.job_id)).status == JobStatus.completed
    assert [r.getMessage() for r in caplog.records if r.name == tasks.__name__] == [
        f"job {job.job_id}: budget not settled: QueueUnavailable"
    ]


HOOK = "https://hooks.example.com/smartgen"


async def webhook_payloads(world: World, event: str) -> list[dict[str, Any]]:
    """The payloads of the webhook deliveries written (and queued) for `event`."""
    due = await world.store.webhooks.list_due_deliveries(utcnow() + timedelta(hours=1), limit=100)
    return [d.payload for d in due if d.event == event]


async def test_the_job_completed_webhook_shows_the_job_as_stored(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    """A job's `webhookUrl` hears of its end with the job as `GET /generate-content/{id}`
    shows it: every field the answer brought (here a kept one: model, usage and cost,
    finish reason), and the moment it ended."""
    job = await world.job(f"Hooked [hooked-{unique}]", options={"webhookUrl": HOOK})
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "cost": 0.125}
    result = {"content": "Hooked text", "model": "m/x", "usage": usage, "finish_reason": "length"}
    delivery = world.delivery(job.job_id, data={"jobId": job.job_id, "result": result})
    assert await world.task()(delivery) == "completed"
    done = await world.stored(job.job_id)
    assert done.cost == 0.125 and done.finish_reason == "length"
    [payload] = await webhook_payloads(world, "job.completed")
    assert payload == job_event_data(done)
    assert payload["finishReason"] == "length" and payload["model"] == "m/x"
    # The job_status event of its end carries the same moment.
    events = await world.events()
    [end] = [d for e, d in events if e == "job_status" and d["status"] == "completed"]
    [completed] = named(events, "job_completed")
    assert end["at"] == completed["completedAt"] == payload["completedAt"]
    assert done.updated_at == done.completed_at


async def test_the_job_failed_webhook_shows_the_job_as_stored(
    world: World, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[hookfail-{unique}]"
    fake_llm.always(marker, Reply(status=400))
    job = await world.job(f"Hooked {marker}", options={"webhookUrl": HOOK})
    with pytest.raises(GiveUp):
        await world.task()(world.delivery(job.job_id))
    [payload] = await webhook_payloads(world, "job.failed")
    assert payload == job_event_data(await world.stored(job.job_id))


async def test_a_kept_answer_completes_even_if_its_live_text_cannot_be_cleared(
    world: World, unique: str
) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    job = await world.job(f"Kept [keptlive-{unique}]")
    data = {"jobId": job.job_id, "result": {"content": "From before", "model": "m"}}
    try:
        task = world.task(live=RedisLiveText(dead, "nowhere"))
        assert await task(world.delivery(job.job_id, data=data)) == "completed"
    finally:
        await dead.aclose()
    assert (await world.stored(job.job_id)).generated_content == "From before"


async def test_a_kept_answer_clears_the_live_text_its_first_attempt_left(
    world: World, unique: str
) -> None:
    job = await world.job(f"Kept [keptclear-{unique}]")
    await world.live.append(job.job_id, "the first attempt's text", first=True)
    data = {"jobId": job.job_id, "result": {"content": "the first attempt's text"}}
    assert await world.task()(world.delivery(job.job_id, data=data)) == "completed"
    assert await world.live.get(job.job_id) is None


class LiveTextLostMidway(RedisLiveText):
    """Live text whose Redis goes away once the text is written: its clear goes to a
    Redis that does not answer."""

    def __init__(self, live: RedisLiveText, dead: aioredis.Redis) -> None:
        super().__init__(dead, "nowhere")
        self._live = live

    async def append(self, job_id: str, text: str, *, first: bool = False) -> None:
        await self._live.append(job_id, text, first=first)


async def test_live_text_that_cannot_be_cleared_after_a_broken_stream_is_logged(
    world: World, fake_llm: FakeLLM, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"[noclear-{unique}]"
    fake_llm.script(marker, [Reply(chunk_delay=0.03, break_after=8)])
    job = await world.job(f"Not cleared {marker}")
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    try:
        task = world.task(live=LiveTextLostMidway(world.live, dead))
        with caplog.at_level("DEBUG", logger=tasks.__name__), pytest.raises(RetryLater):
            await task(world.delivery(job.job_id))
    finally:
        await dead.aclose()
    [line] = [
        r.getMessage()
        for r in caplog.records
        if r.name == tasks.__name__ and "live text not cleared" in r.getMessage()
    ]
    assert line.startswith(f"job {job.job_id}: live text not cleared: ")
    assert "127.0.0.1:1" in line
    # The reset still went out: clients drop the partial text.
    progress = named(await world.events(), "job_progress")
    assert progress[-1]["reset"] is True
