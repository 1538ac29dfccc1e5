"""generation/service.py in detail, in process and quickly: a job's options as it keeps
them, its own webhook URL, a job the queue refuses, variations and the list, over a real
SQLite store, the real queue (bullmq on the session's private Redis) and the Redis budgets.
The same calls over the HTTP API are in test_api.py and test_job_control.py; these run in
seconds, so a mutation run can afford them (bench/mutation.py's first stage). `store`,
`redis` and `queue` are conftest's, over this module's `s`."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from smartgen.config import Settings
from smartgen.errors import Conflict, NotFound, QueueUnavailable, TooManyRequests, ValidationFailed
from smartgen.generation import budget, service
from smartgen.generation.budget import month_of
from smartgen.generation.prompts import model_request
from smartgen.kit.outbound import UrlRefused, check_url
from smartgen.kit.times import utcnow
from smartgen.models import Completion, Job, JobStatus, Voice
from smartgen.queue.budgets import RedisBudgets
from smartgen.queue.producer import GenerationQueue
from smartgen.store.base import Store
from tests.test_control_details import FixedPrices, KnownTimings, Notes, RefusingQueue, warned

PROMPT = "How to bake bread"
TYPE = "Blog Post Outline"


@pytest.fixture
def store_kind() -> str:
    return "sqlite"


@pytest.fixture
def s(env: dict[str, str]) -> Settings:
    """Two models allowed, and a token budget far from its 80 % warning."""
    chosen = {k.lower(): v for k, v in env.items()}
    chosen.update(
        allowed_models="fake/model-1,fake/model-2",
        user_monthly_token_budget="1000000",
    )
    return Settings(_env_file=None, **chosen)  # type: ignore[arg-type]


@pytest.fixture
def budgets(redis: aioredis.Redis, s: Settings) -> RedisBudgets:
    return RedisBudgets(redis, f"{s.queue_prefix}:smartgen")


def user() -> str:
    return uuid.uuid4().hex[:24]


async def used(budgets: RedisBudgets, user_id: str) -> int:
    tokens, _ = await budgets.used(user_id, month_of(utcnow()))
    return tokens


async def new_voice(store: Store, user_id: str) -> Voice:
    now = utcnow()
    voice = Voice(
        voice_id=str(uuid.uuid4()), user_id=user_id, name="Baker", description="Warm, plain",
        examples=["Knead it well.", "Let it rest."], created_at=now, updated_at=now,
    )  # fmt: skip
    assert await store.voices.create(voice, max_per_user=10)
    return voice


async def test_options_are_kept_with_the_model_checked_and_the_voice_copied(
    store: Store, s: Settings
) -> None:
    owner = user()

    async def resolve(options: dict[str, Any] | None, user_id: str = owner) -> Any:
        return await service.resolve_options(
            store=store, settings=s, user_id=user_id, options=options
        )

    assert await resolve(None) is None
    assert await resolve({}) is None
    with pytest.raises(ValidationFailed) as info:
        await resolve({"model": "other/model"})
    assert info.value.message == (
        "model: 'other/model' is not allowed; choose one of: fake/model-1, fake/model-2"
    )
    assert info.value.details == [
        {"field": "model", "message": "one of: fake/model-1, fake/model-2"}
    ]
    chosen = {"model": "fake/model-2", "tone": "friendly"}
    assert await resolve(chosen) == chosen
    voice = await new_voice(store, owner)
    with pytest.raises(NotFound) as missing:
        await resolve({"voiceId": voice.voice_id}, user_id=user())  # not theirs
    assert (missing.value.code, missing.value.message) == ("voice_not_found", "Voice not found")
    asked = {"voiceId": voice.voice_id, "tone": "friendly"}
    assert await resolve(asked) == {
        "voiceId": voice.voice_id,
        "tone": "friendly",
        "voice": {
            "voiceId": voice.voice_id,
            "name": "Baker",
            "description": "Warm, plain",
            "examples": ["Knead it well.", "Let it rest."],
        },
    }
    assert asked == {"voiceId": voice.voice_id, "tone": "friendly"}  # the caller's, untouched


async def test_a_jobs_own_webhook_url_passes_the_ssrf_rules_and_needs_a_secret(
    store: Store, s: Settings
) -> None:
    owner = user()

    async def check(url: str, settings: Settings = s) -> str:
        return await service.checked_webhook_url(
            store=store, settings=settings, user_id=owner, url=url
        )

    for url in ["https://169.254.169.254/latest", "http://example.com/hook"]:
        with pytest.raises(UrlRefused) as why:
            await check_url(url, allow_http=False, allow_private=False)
        with pytest.raises(ValidationFailed) as info:
            await check(url)
        assert info.value.code == "webhook_url_refused"
        assert info.value.message == f"webhookUrl: {why.value.reason}"
        assert info.value.details == [{"field": "webhookUrl", "message": why.value.reason}]
    assert why.value.reason == "the URL must use https (plain http is not allowed here)"
    # A deployment that allows plain http and private addresses (a test bench, an intranet).
    open_ = s.model_copy(
        update={"webhook_allow_http": True, "webhook_allow_private_networks": True}
    )
    with pytest.raises(Conflict) as info_:
        await check("http://127.0.0.1:9/hook", open_)
    assert info_.value.code == "webhook_secret_missing"
    assert info_.value.message == (
        "webhookUrl: get your default webhook secret first (GET /webhooks/secret); "
        "this job's deliveries are signed with it"
    )
    assert await store.webhooks.create_secret(owner, "whsec_dGVzdA==", at=utcnow())
    assert await check("  http://127.0.0.1:9/hook ", open_) == "http://127.0.0.1:9/hook"


class RecordingRefusal(RefusingQueue):
    """Refuses every enqueue (after `before`), and keeps the job ids it was given."""

    def __init__(self, real: GenerationQueue, before: Any = None) -> None:
        super().__init__(real, before=before)
        self.job_ids: list[str] = []

    async def enqueue(self, *, job_id: str, data: dict[str, Any], delay_ms: int) -> None:
        self.job_ids.append(job_id)
        await super().enqueue(job_id=job_id, data=data, delay_ms=delay_ms)


async def test_a_job_the_queue_refuses_is_removed_and_its_reservation_given_back(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    owner, notes = user(), Notes()
    refusing = RecordingRefusal(queue)
    with (
        caplog.at_level(logging.DEBUG, logger="smartgen.generation.service"),
        pytest.raises(QueueUnavailable),
    ):
        await service.queue_generation(
            store=store, queue=refusing, notifier=notes, settings=s, user_id=owner,  # type: ignore[arg-type]
            prompt=PROMPT, content_type=TYPE, budgets=budgets,
        )  # fmt: skip
    [job_id] = refusing.job_ids
    assert await store.jobs.get(job_id) is None
    assert await used(budgets, owner) == 0
    assert notes.jobs == [] and caplog.records == []
    # The store fails too: the job stays (the reconciler handles it), and the log says so.
    broken = RecordingRefusal(queue, before=store.close)
    with (
        caplog.at_level(logging.ERROR, logger="smartgen.generation.service"),
        pytest.raises(QueueUnavailable),
    ):
        await service.queue_generation(
            store=store, queue=broken, notifier=notes, settings=s, user_id=owner,  # type: ignore[arg-type]
            prompt=PROMPT, content_type=TYPE,
        )  # fmt: skip
    [job_id] = broken.job_ids
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"job {job_id} could not be queued nor removed")
    ]


async def test_past_the_cap_the_message_counts_every_unfinished_job(
    store: Store, queue: GenerationQueue, s: Settings
) -> None:
    owner = user()
    for _ in range(3):
        await service.queue_generation(
            store=store, queue=queue, notifier=Notes(), settings=s, user_id=owner,
            prompt=PROMPT, content_type=TYPE,
        )  # fmt: skip
    lowered = s.model_copy(update={"max_unfinished_jobs": 2})  # lowered since
    with pytest.raises(TooManyRequests) as info:
        await service.queue_generation(
            store=store, queue=queue, notifier=Notes(), settings=lowered, user_id=owner,
            prompt=PROMPT, content_type=TYPE, delay_seconds=0.4,
        )  # fmt: skip
    assert info.value.message == "You have 3 unfinished jobs (at most 2); wait for some to finish"
    assert info.value.headers == {"Retry-After": "1"}  # at least a second


async def test_a_new_job_keeps_its_options_its_delay_and_its_quote(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets
) -> None:
    owner, notes = user(), Notes()
    now = await service.queue_generation(
        store=store, queue=queue, notifier=notes, settings=s, user_id=owner, prompt=PROMPT,
        content_type=TYPE, delay_seconds=0, options={}, timings=KnownTimings(),
        prices=FixedPrices(), budgets=budgets,
    )  # fmt: skip
    job = now.job
    assert (job.options, job.parent_job_id, job.status) == (None, None, JobStatus.queued)
    assert job.scheduled_for == job.created_at == job.updated_at  # no delay: now
    assert now.delay_seconds == 0
    assert now.estimated_completion == job.scheduled_for + timedelta(seconds=12.5)
    quote = await budget.quote(s, FixedPrices(), model_request(TYPE, PROMPT, None))
    assert now.estimated_cost == quote.cost and quote.cost is not None
    assert await used(budgets, owner) == quote.tokens
    assert await store.jobs.get(job.job_id) == job
    assert await queue.state(job.job_id) == "waiting"
    assert notes.jobs == [job]
    later = await service.queue_generation(
        store=store, queue=queue, notifier=notes, settings=s, user_id=owner, prompt=PROMPT,
        content_type="Product Description", delay_seconds=90, timings=KnownTimings(),
    )  # fmt: skip
    assert later.job.scheduled_for == later.job.created_at + timedelta(seconds=90)
    # No recent timings of this type: the configured processing time.
    assert later.estimated_completion == later.job.scheduled_for + timedelta(
        seconds=s.expected_processing_seconds
    )


async def test_a_new_job_that_takes_the_budget_past_80_percent_warns(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets
) -> None:
    owner, notes = user(), Notes()
    tokens = (await budget.quote(s, None, model_request(TYPE, PROMPT, None))).tokens
    near = s.model_copy(update={"user_monthly_token_budget": tokens + 10})
    await service.queue_generation(
        store=store, queue=queue, notifier=notes, settings=near, user_id=owner, prompt=PROMPT,
        content_type=TYPE, budgets=budgets,
    )  # fmt: skip
    assert notes.user_events == warned(owner, near, tokens)


async def completed(store: Store, job: Job, text: str) -> Job:
    assert await store.jobs.mark_processing(job.job_id, at=utcnow(), attempt=1)
    done = Completion(content=text, model="fake/model-1")
    assert await store.jobs.mark_completed(job.job_id, result=done, at=utcnow())
    got = await store.jobs.get(job.job_id)
    assert got is not None and got.status is JobStatus.completed
    return got


async def test_a_variation_is_a_new_job_of_the_same_request_told_to_differ(
    store: Store, queue: GenerationQueue, s: Settings, budgets: RedisBudgets
) -> None:
    owner = user()
    options = {"model": "fake/model-2", "tone": "friendly"}
    first = await service.queue_generation(
        store=store, queue=queue, notifier=Notes(), settings=s, user_id=owner, prompt=PROMPT,
        content_type=TYPE, options=options,
    )  # fmt: skip
    with pytest.raises(Conflict) as info:
        await service.queue_variation(
            store=store, queue=queue, notifier=Notes(), settings=s, user_id=owner,
            job_id=first.job.job_id,
        )  # fmt: skip
    assert (info.value.code, info.value.message) == (
        "job_not_completed",
        "Only completed jobs can have variations; this job is queued",
    )
    parent = await completed(store, first.job, "Flour, water, salt, time. " * 30)
    notes = Notes()
    made = await service.queue_variation(
        store=store, queue=queue, notifier=notes, settings=s, user_id=owner,
        job_id=parent.job_id, timings=KnownTimings(), prices=FixedPrices(), budgets=budgets,
    )  # fmt: skip
    child = made.job
    assert child.job_id != parent.job_id and child.parent_job_id == parent.job_id
    assert (child.prompt, child.content_type, child.options) == (PROMPT, TYPE, options)
    assert made.delay_seconds == s.generation_delay_seconds
    assert made.estimated_completion == child.scheduled_for + timedelta(seconds=12.5)
    told = model_request(TYPE, PROMPT, options, previous=parent.generated_content)
    quote = await budget.quote(s, FixedPrices(), told)
    assert quote.tokens > (await budget.quote(s, None, model_request(TYPE, PROMPT, options))).tokens
    assert (made.estimated_cost, await used(budgets, owner)) == (quote.cost, quote.tokens)
    assert notes.jobs == [child] and await store.jobs.get(child.job_id) == child
    # A model no longer allowed: the variation uses the deployment's model instead.
    narrower = s.model_copy(update={"allowed_models": ["fake/model-1"]})
    again = await service.queue_variation(
        store=store, queue=queue, notifier=Notes(), settings=narrower, user_id=owner,
        job_id=parent.job_id,
    )  # fmt: skip
    assert again.job.options == {"tone": "friendly"}
    assert parent.options == options  # the original keeps its own
    with pytest.raises(NotFound):
        await service.queue_variation(
            store=store, queue=queue, notifier=Notes(), settings=s, user_id=user(),
            job_id=parent.job_id,
        )  # fmt: skip
    # A job queued with no options: its variation has none either.
    plain = await service.queue_generation(
        store=store, queue=queue, notifier=Notes(), settings=s, user_id=owner, prompt=PROMPT,
        content_type=TYPE,
    )  # fmt: skip
    bare = await completed(store, plain.job, "Bread.")
    varied = await service.queue_variation(
        store=store, queue=queue, notifier=Notes(), settings=s, user_id=owner,
        job_id=bare.job_id,
    )  # fmt: skip
    assert (varied.job.options, varied.job.parent_job_id) == (None, bare.job_id)


async def test_the_list_is_newest_first_its_limit_defaulted_and_capped(
    store: Store, queue: GenerationQueue, s: Settings
) -> None:
    owner = user()
    jobs = []
    for n in range(4):
        queued = await service.queue_generation(
            store=store, queue=queue, notifier=Notes(), settings=s, user_id=owner,
            prompt=f"{PROMPT} {n}", content_type=TYPE,
        )  # fmt: skip
        jobs.append(queued.job)
    newest = [j.job_id for j in reversed(jobs)]
    small = s.model_copy(update={"jobs_list_default_limit": 2, "jobs_list_max_limit": 3})

    async def listed(limit: int | None, status: JobStatus | None = None) -> list[str]:
        found = await service.list_jobs(
            store=store, settings=small, user_id=owner, limit=limit, status=status
        )
        return [j.job_id for j in found]

    assert await listed(None) == newest[:2]
    assert await listed(3) == newest[:3]
    assert await listed(10) == newest[:3]  # capped
    assert await listed(1) == newest[:1]
    assert await store.jobs.cancel(jobs[1].job_id, owner, at=utcnow())
    assert await listed(None, JobStatus.cancelled) == [jobs[1].job_id]
