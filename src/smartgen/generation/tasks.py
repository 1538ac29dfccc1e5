"""The worker's processor: load the job by id, generate, store, notify.

Safe to run twice (delivery is at least once): a job that is already final in the store
is never generated again, and a completion is written only over `processing`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from bullmq.custom_errors import UnrecoverableError

from smartgen.config import Settings
from smartgen.errors import AppError
from smartgen.generation.prompts import build_messages
from smartgen.llm.client import LLMError
from smartgen.queue import backoff_delay_ms
from smartgen.realtime import Notifier
from smartgen.store.base import Completion, Job, JobStatus, Store
from smartgen.times import utcnow

log = logging.getLogger(__name__)

INTERNAL_FAILURE = "generation failed because of an internal error; please try again"


class Generator(Protocol):
    model: str

    async def complete(self, messages: list[dict[str, str]]) -> Completion: ...


class RetryLater(Exception):
    """Raised to let the queue retry; carries the provider's `Retry-After`, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def backoff_strategy(settings: Settings) -> Any:
    """bullmq custom backoff: exponential with jitter, never sooner than Retry-After."""

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


class GenerationTask:
    """`async def process(job, token)`, the shape bullmq calls."""

    def __init__(
        self, *, store: Store, llm: Generator, notifier: Notifier, settings: Settings
    ) -> None:
        self.store = store
        self.llm = llm
        self.notifier = notifier
        self.settings = settings

    async def __call__(self, job: Any, token: str) -> str:
        data: dict[str, Any] = job.data if isinstance(job.data, dict) else {}
        job_id = str(data.get("jobId") or job.id)
        attempt = int(job.attemptsMade) + 1
        last_attempt = attempt >= int(job.opts.get("attempts") or 1)
        try:
            return await self._run(job, job_id, data, attempt, last_attempt)
        except (RetryLater, UnrecoverableError):
            raise
        except Exception as exc:
            # Store or programming errors: let the queue retry; on the last attempt
            # leave a clear `failed` state rather than a job stuck in `processing`.
            log.warning("job %s attempt %d failed: %s", job_id, attempt, type(exc).__name__)
            if last_attempt:
                await self._fail(job_id, INTERNAL_FAILURE)
                raise UnrecoverableError(INTERNAL_FAILURE) from exc
            raise RetryLater(INTERNAL_FAILURE) from exc

    async def _run(
        self, job: Any, job_id: str, data: dict[str, Any], attempt: int, last_attempt: bool
    ) -> str:
        # One conditional write decides; the job is read only when it was not taken.
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        # The queue message's id owns the lease: its own retries and stalled-job recovery
        # may take the job over at once; another message for the same job may not.
        started = await self.store.jobs.mark_processing(
            job_id, at=now, attempt=attempt, lease_until=lease, owner=str(job.id)
        )
        if started is None:
            return await self._not_taken(job_id, now, last_attempt)
        await self.notifier.job_changed(started)

        kept = data.get("result")
        if isinstance(kept, dict) and kept.get("content"):
            # An earlier attempt generated this but could not store it: no second LLM call.
            completion = Completion(
                content=kept["content"], model=kept.get("model") or "", usage=kept.get("usage")
            )
        else:
            try:
                completion = await self.llm.complete(
                    build_messages(started.content_type, started.prompt)
                )
            except LLMError as exc:
                if exc.retryable and not last_attempt:
                    log.info("job %s attempt %d: %s (will retry)", job_id, attempt, exc.message)
                    raise RetryLater(exc.message, exc.retry_after) from None
                message = f"Generation failed: {exc.message}"
                await self._fail(job_id, message)
                raise UnrecoverableError(message) from None

        await self._complete(job, started, data, completion)
        return "completed"

    async def _not_taken(self, job_id: str, now: datetime, last_attempt: bool) -> str:
        """Another delivery of the same job holds it (or it just finished)."""
        current = await self.store.jobs.get(job_id)
        if current is None:
            log.info("job %s is not in the store; dropping it", job_id)
            return "missing"
        if current.status.is_final:
            return f"already {current.status.value}"
        held_for = (current.lease_until - now).total_seconds() if current.lease_until else 0.0
        if last_attempt:
            # The holder finishes it; if it dies, the reconciler queues the job again.
            return "held by another delivery"
        raise RetryLater("another delivery of this job is running", max(0.5, held_for + 0.5))

    async def _complete(
        self, job: Any, started: Job, data: dict[str, Any], completion: Completion
    ) -> None:
        job_id = started.job_id
        deadline = asyncio.get_running_loop().time() + self.settings.store_write_retry_seconds
        delay = 0.2
        while True:
            try:
                at = utcnow()
                written = await self.store.jobs.mark_completed(job_id, result=completion, at=at)
                break
            except AppError:
                if asyncio.get_running_loop().time() + delay > deadline:
                    # Keep the result with the queue message so the retry skips the LLM.
                    await job.updateData({**data, "result": asdict(completion)})
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if written:
            final = replace(
                started,
                status=JobStatus.completed,
                generated_content=completion.content,
                model=completion.model,
                usage=completion.usage,
                completed_at=at,
                updated_at=at,
            )
            await self.notifier.job_changed(final)

    async def _fail(self, job_id: str, message: str) -> None:
        try:
            if await self.store.jobs.mark_failed(job_id, error=message, at=utcnow()):
                final: Job | None = await self.store.jobs.get(job_id)
                if final is not None:
                    await self.notifier.job_changed(final)
        except AppError:
            log.error("job %s: could not record failure (store unavailable)", job_id)
