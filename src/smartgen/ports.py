"""What the domains ask of the world outside them, as protocols: the job queue and its
cancel signal, the event notifier and live text, the language model, timing statistics and
rate limits. Services and tasks take these; the queue, realtime and llm packages implement
them, so no domain module imports bullmq, redis or socketio.

Also the outcomes a task may report to whichever queue runs it (`RetryLater`, `RunLater`,
`GiveUp`): the queue adapter turns them into its own library's terms."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from smartgen.models import Completion, Job, ModelRequest


class JobQueue(Protocol):
    async def enqueue(
        self, *, job_id: str, data: dict[str, Any], delay_ms: int, message_id: str | None = None
    ) -> None:
        """Queue a job to run after `delay_ms`; idempotent for the same `job_id` (the queue
        message's id, unless another `message_id` is given: a second message for a job
        whose first one is held by a dead worker). `ServiceUnavailable` when the queue does
        not answer."""

    async def remove(self, job_id: str) -> bool:
        """Forget the job's queue entry, if any; False when a worker holds it right now."""

    async def reschedule(self, *, job_id: str, data: dict[str, Any], delay_ms: int) -> None:
        """Run the job after `delay_ms` from now instead; a delivery a worker already holds
        is left to find the new time in the store."""

    async def cancel(self, job_id: str) -> None:
        """Drop the job's queue entry and tell the worker running it, if any, to stop."""

    async def state(self, job_id: str) -> str:
        """delayed, waiting, active, completed, failed, unknown, …"""


class WebhookQueue(Protocol):
    async def enqueue_delivery(
        self, delivery_id: str, *, attempt: int, delay_ms: int, again: bool = False
    ) -> None:
        """Queue attempt `attempt` of a webhook delivery after `delay_ms`; idempotent for
        the same delivery and attempt unless `again` (a redelivery asked for by its
        owner). `ServiceUnavailable` when the queue does not answer."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per token, as OpenRouter's GET /models gives it."""

    prompt: float
    completion: float


class Prices(Protocol):
    async def price(self, model: str) -> ModelPrice | None:
        """The model's price; None when unknown (never raises)."""


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A user's month after a budget operation: what is used (reservations included)."""

    accepted: bool
    tokens_used: int
    cost_used: float
    tokens_before: int = 0
    cost_before: float = 0.0


class Budgets(Protocol):
    """Monthly reservations per user, atomic across processes."""

    async def reserve(
        self,
        *,
        user_id: str,
        job_id: str,
        month: str,
        tokens: int,
        cost: float,
        token_limit: int,
        cost_limit: float,
    ) -> BudgetState:
        """Add the job's quote to the user's `month` unless it would pass a limit (0: none);
        `accepted` says which. Reserving the same job again changes nothing."""

    async def settle(
        self, job_id: str, *, tokens: int | None, cost: float | None
    ) -> BudgetState | None:
        """Replace the job's reservation by what it really used (None: keep the quote's
        number); None when it holds no reservation (settled or released already)."""

    async def requote(
        self, job_id: str, *, tokens: int, cost: float, token_limit: int, cost_limit: float
    ) -> BudgetState | None:
        """Replace the job's reservation by a new quote (its prompt or type changed) unless
        a larger one would pass a limit (0: none): `accepted` says which. None when the job
        holds no reservation."""

    async def release(self, job_id: str) -> BudgetState | None:
        """Give the job's reservation back (cancelled, failed); None when there is none."""

    async def used(self, user_id: str, month: str) -> tuple[int, float]:
        """(tokens, cost) the user's `month` holds, reservations included."""

    async def first_warning(self, user_id: str, month: str, budget: str) -> bool:
        """True the first time this is asked for the user's month and budget, then False
        (so that a budget_warning goes out once a month, not at every crossing)."""


class Notifier(Protocol):
    async def job_changed(self, job: Job, *, settled: bool = False, repeat: bool = False) -> None:
        """Announce a job's new state to its owner. Never blocks on delivery and never
        raises, unless `settled`: then it returns once the announcement is in the event
        log, and raises if it could not be logged. `repeat`: this state was (maybe)
        announced before, by a delivery that did not finish."""

    async def job_progress(self, job: Job, *, delta: str, length: int, reset: bool) -> None:
        """Announce text a running job has written (`reset`: start again from nothing)."""

    async def user_event(self, user_id: str, event: str, payload: dict[str, Any]) -> None:
        """Announce an event about the user rather than one job (`budget_warning`);
        never blocks and never raises."""


class BatchTurns(Protocol):
    """Lets a batch's waiting jobs into the queue as its slots free up (`batches.runner`)."""

    async def next_turns(self, batch_id: str) -> None:
        """Fill the batch's free slots (BATCH_CONCURRENCY) with its next waiting rows, and
        finish the batch when nothing of it is left; never raises (the periodic pass does
        what this could not)."""


class LiveText(Protocol):
    """The text of running jobs so far (never a job's content: that is the store's)."""

    async def append(self, job_id: str, text: str, *, first: bool = False) -> None:
        """Add `text`; `first`: it starts this run's text (what an earlier, crashed run
        left is replaced)."""

    async def clear(self, job_id: str) -> None: ...

    async def get(self, job_id: str) -> str | None: ...


class Generator(Protocol):
    model: str

    async def generate(self, request: ModelRequest) -> Completion:
        """The model's answer; `llm.errors.LLMError` says why there is none."""

    def generate_stream(self, request: ModelRequest) -> AsyncIterator[str | Completion]:
        """Text as it is written, then the assembled `Completion` last; `LLMError` too."""


class Cancellations(Protocol):
    """The worker's side of `JobQueue.cancel`."""

    def guard(self, job_id: str) -> AbstractContextManager[None]:
        """While inside, a cancel of `job_id` stops the current task's wait at once and
        raises `JobCancelled` instead."""


class Timings(Protocol):
    """How long jobs took to process, per content type (for `estimatedCompletionTime`)."""

    async def typical_seconds(self, content_type: str) -> float | None:
        """The median of recent processing times; None with no history yet."""

    async def record(self, content_type: str, seconds: float) -> None: ...


class RateLimits(Protocol):
    async def hit(
        self, bucket: str, key: str, *, limit: int, window_seconds: float, fail_open: bool
    ) -> None:
        """Count one hit of `key` in `bucket`; `TooManyRequests` over `limit` (0: off)."""


class LoginAttempts(Protocol):
    """Failed logins, counted so that an attacker locks out only itself (README: Security)."""

    async def check(self, email: str, address: str) -> None:
        """`TooManyRequests` when this address may not try this email's password now."""

    async def failed(self, email: str, address: str) -> None: ...

    async def succeeded(self, email: str, address: str) -> None:
        """The address becomes known to the account; its own failures are forgotten."""


class EventHistory(Protocol):
    async def forget(self, user_id: str) -> None:
        """Drop everything logged for the user (the account is being deleted)."""


class Revocations(Protocol):
    """Sessions ended before their tokens expire, known to every API process at once."""

    async def revoke_token(self, user_id: str, token_id: str, *, expires_at: datetime) -> None:
        """This token (by its `jti`) is refused from now on (logout)."""

    async def revoke_user(self, user_id: str, *, before: float, deleted: bool = False) -> None:
        """Every token of this user issued before `before` (a Unix time) is refused from
        now on (password change; `deleted`: the account is gone)."""


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """A refresh token just issued: the opaque token, whose session family it belongs to
    and whose user it speaks for."""

    token: str
    user_id: str
    family: str


class RefreshTokens(Protocol):
    """The web console's refresh tokens: random, stored hashed, single use (rotation), in
    families that end together (logout, reuse of a rotated token, password change)."""

    async def start(self, user_id: str) -> RefreshGrant:
        """A new family (a sign-in) and its first token."""

    async def rotate(self, token: str) -> RefreshGrant:
        """Spend `token` and return its successor in the same family. `Unauthorized` when
        it is unknown, expired or its family ended; a token already spent ends its
        family (someone holds a copy) and is refused with `refresh_reused`."""

    async def end(self, token: str) -> None:
        """End the family `token` belongs to (logout); nothing when it is unknown."""

    async def end_user(self, user_id: str) -> None:
        """End every family of the user (password change, account deletion)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a queue message, as the queue hands it to a task."""

    message_id: str  # the queue message's id: it owns the job's lease while it runs
    data: dict[str, Any]
    attempt: int  # 1 for the first
    attempts: int  # how many the message gets in all
    keep: Callable[[dict[str, Any]], Awaitable[None]]  # store new data with the message
    worker: str = ""  # the worker process running it (`queue.liveness` watches workers)

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.attempts

    @property
    def owner(self) -> str:
        """Who holds the job's lease while this delivery runs: the message on this worker.
        A retry of the message here may take the job back at once; a redelivery of the
        same message to another worker (its lock lapsed while this one lives) may not."""
        return f"{self.message_id}@{self.worker}" if self.worker else self.message_id


class JobCancelled(Exception):
    """The job's owner cancelled it while this task ran."""


class RunLater(Exception):
    """Not yet: run this delivery again at `at` (the job was rescheduled)."""

    def __init__(self, at: datetime) -> None:
        super().__init__(f"not due before {at.isoformat()}")
        self.at = at


class RetryLater(Exception):
    """Run this delivery again later; `retry_after` (seconds) when the provider said when."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GiveUp(Exception):
    """Do not run this delivery again: the job's outcome is recorded."""
