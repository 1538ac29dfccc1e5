"""What the domains ask of the world outside them, as protocols: the job queue, the event
notifier, the language model and rate limits. Services and tasks take these; the queue, realtime and
llm packages implement them, so no domain module imports bullmq, redis or socketio.

Also the two outcomes a task may report to whichever queue runs it (`RetryLater`,
`GiveUp`): the queue adapter turns them into its own library's terms."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from smartgen.models import Completion, Job, ModelRequest


class JobQueue(Protocol):
    async def enqueue(self, *, job_id: str, data: dict[str, Any], delay_ms: int) -> None:
        """Queue a job to run after `delay_ms`; idempotent for the same `job_id`.
        `ServiceUnavailable` when the queue does not answer."""

    async def remove(self, job_id: str) -> None:
        """Forget the job's queue entry, if any."""

    async def state(self, job_id: str) -> str:
        """delayed, waiting, active, completed, failed, unknown, …"""


class Notifier(Protocol):
    async def job_changed(self, job: Job) -> None:
        """Announce a job's new state to its owner. Never blocks on delivery, never raises."""


class Generator(Protocol):
    model: str

    async def generate(self, request: ModelRequest) -> Completion:
        """The model's answer; `llm.errors.LLMError` says why there is none."""


class RateLimits(Protocol):
    async def hit(
        self, bucket: str, key: str, *, limit: int, window_seconds: float, fail_open: bool
    ) -> None:
        """Count one hit of `key` in `bucket`; `TooManyRequests` over `limit` (0: off)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a queue message, as the queue hands it to a task."""

    message_id: str  # the queue message's id: it owns the job's lease while it runs
    data: dict[str, Any]
    attempt: int  # 1 for the first
    attempts: int  # how many the message gets in all
    keep: Callable[[dict[str, Any]], Awaitable[None]]  # store new data with the message

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.attempts


class RetryLater(Exception):
    """Run this delivery again later; `retry_after` (seconds) when the provider said when."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GiveUp(Exception):
    """Do not run this delivery again: the job's outcome is recorded."""
