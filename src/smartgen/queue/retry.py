"""Retries: exponential backoff with jitter, capped, never sooner than `Retry-After`."""

from __future__ import annotations

import random
from typing import Any

from smartgen.config import Settings

BACKOFF_TYPE = "smartgen"  # the name a Node BullMQ worker sharing the queue must register


def backoff_delay_ms(
    attempts_made: int, base_ms: int, cap_ms: int, retry_after_ms: int | None
) -> int:
    """Exponential backoff with full jitter in [0.5, 1.0] of the step, capped, and never
    sooner than the server's `Retry-After`."""
    step = min(cap_ms, base_ms * 2 ** max(0, attempts_made - 1))
    delay = int(step * random.uniform(0.5, 1.0))
    if retry_after_ms:
        delay = max(delay, retry_after_ms)
    return max(1, delay)


def backoff_strategy(settings: Settings) -> Any:
    """bullmq's custom backoff callable: `(attempts_made, type, error, job) -> ms`; the
    error's `retry_after` (seconds, from `ports.RetryLater`) is honoured."""

    def strategy(attempts_made: int, _type: str, err: Any, job: Any) -> int:
        base = int((job.opts.get("backoff") or {}).get("delay") or settings.job_backoff_ms)
        retry_after = getattr(err, "retry_after", None)
        return backoff_delay_ms(
            attempts_made,
            base,
            settings.job_backoff_max_ms,
            int(retry_after * 1000) if retry_after else None,
        )

    return strategy
