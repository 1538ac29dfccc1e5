"""Retries: exponential backoff with jitter, capped, never sooner than `Retry-After`
(queue/retry.py), then the same policy seen in the attempts of a real worker process."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import httpx
import pytest

from smartgen.config import Settings
from smartgen.queue.retry import backoff_delay_ms, backoff_strategy
from tests.conftest import Process, register, start_system, wait_for_status
from tests.fakellm import FakeLLM, Reply
from tests.test_worker import queue


@pytest.mark.parametrize(
    ("attempts_made", "step"),
    [(0, 1000), (1, 1000), (2, 2000), (3, 4000), (4, 8000), (5, 10_000), (40, 10_000)],
)
def test_backoff_doubles_from_the_base_up_to_the_cap(
    monkeypatch: pytest.MonkeyPatch, attempts_made: int, step: int
) -> None:
    # The jitter's two ends: half the step and the whole step.
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    assert backoff_delay_ms(attempts_made, 1000, 10_000, None) == step // 2
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    assert backoff_delay_ms(attempts_made, 1000, 10_000, None) == step


def test_backoff_jitter_spreads_within_half_to_whole_step() -> None:
    rng_state = random.getstate()
    try:
        random.seed(20)
        delays = [backoff_delay_ms(3, 1000, 300_000, None) for _ in range(500)]
    finally:
        random.setstate(rng_state)
    assert all(2000 <= d <= 4000 for d in delays)
    assert len(set(delays)) > 100  # spread out, not one fixed delay
    assert min(delays) < 2300 and max(delays) > 3700  # across the whole range


def test_backoff_never_sooner_than_retry_after_and_never_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    assert backoff_delay_ms(1, 200, 10_000, 5000) == 5000  # Retry-After wins
    assert backoff_delay_ms(3, 2000, 10_000, 5000) == 8000  # the backoff is longer
    assert backoff_delay_ms(1, 0, 0, None) == 1  # a zero base still waits (bullmq: 0 = now)
    assert backoff_delay_ms(60, 5000, 300_000, None) == 300_000  # no overflow far out


def test_strategy_reads_the_jobs_base_and_the_errors_retry_after(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    s = settings.model_copy(update={"job_backoff_ms": 700, "job_backoff_max_ms": 2000})
    strategy = backoff_strategy(s)
    job = SimpleNamespace(opts={"backoff": {"type": "smartgen", "delay": 300}})
    assert strategy(2, "smartgen", Exception("x"), job) == 600
    assert strategy(9, "smartgen", Exception("x"), job) == 2000  # JOB_BACKOFF_MAX_MS
    bare = SimpleNamespace(opts={})
    assert strategy(1, "smartgen", Exception("x"), bare) == 700  # JOB_BACKOFF_MS
    later = SimpleNamespace(retry_after=1.5)
    assert strategy(1, "smartgen", later, job) == 1500


async def test_worker_attempts_follow_the_backoff(
    env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    """A real worker, a model that always answers 500: the gaps between attempts are at
    least half of each doubled step (the jitter's floor), capped by JOB_BACKOFF_MAX_MS.
    Lower bounds only: a slow machine makes gaps longer, never shorter."""
    system = {
        **env,
        "GENERATION_DELAY_SECONDS": "0",
        "JOB_ATTEMPTS": "4",
        "JOB_BACKOFF_MS": "600",
        "JOB_BACKOFF_MAX_MS": "1000",
    }
    _, _, url = await start_system(system, processes)
    marker = f"[backoff-{unique}]"
    fake_llm.always(marker, Reply(status=500))
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x {marker}")
        job = await wait_for_status(client, queued["jobId"], user["headers"], {"failed"}, 40)
    assert job["attempts"] == 4
    calls = fake_llm.calls_for(marker)
    assert len(calls) == 4
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    # Steps 600, 1200 → capped 1000, 1000: the floors are 300, 500, 500 ms.
    for gap, floor in zip(gaps, [0.3, 0.5, 0.5], strict=True):
        assert gap >= floor, gaps
