"""The worker's task: load the job by id, generate, store, notify.

Safe to run twice (delivery is at least once): a job that is already final in the store
is never generated again, and a completion is written only over `processing`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, replace
from datetime import datetime, timedelta

from smartgen.config import Settings
from smartgen.errors import AppError
from smartgen.generation.prompts import model_request
from smartgen.kit.times import utcnow
from smartgen.llm.errors import LLMError
from smartgen.models import Completion, Job, JobStatus
from smartgen.ports import Delivery, Generator, GiveUp, Notifier, RetryLater
from smartgen.store.base import Store

log = logging.getLogger(__name__)

INTERNAL_FAILURE = "generation failed because of an internal error; please try again"


class GenerationTask:
    """Runs one delivery of a generation job (`queue.runner` calls it)."""

    def __init__(
        self, *, store: Store, llm: Generator, notifier: Notifier, settings: Settings
    ) -> None:
        self.store = store
        self.llm = llm
        self.notifier = notifier
        self.settings = settings

    async def __call__(self, delivery: Delivery) -> str:
        job_id = str(delivery.data.get("jobId") or delivery.message_id)
        try:
            return await self._run(delivery, job_id)
        except (RetryLater, GiveUp):
            raise
        except Exception as exc:
            # Store or programming errors: let the queue retry; on the last attempt
            # leave a clear `failed` state rather than a job stuck in `processing`.
            log.warning(
                "job %s attempt %d failed: %s", job_id, delivery.attempt, type(exc).__name__
            )
            if delivery.last_attempt:
                await self._fail(job_id, INTERNAL_FAILURE)
                raise GiveUp(INTERNAL_FAILURE) from exc
            raise RetryLater(INTERNAL_FAILURE) from exc

    async def _run(self, delivery: Delivery, job_id: str) -> str:
        attempt, last_attempt = delivery.attempt, delivery.last_attempt
        # One conditional write decides; the job is read only when it was not taken.
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        # The queue message's id owns the lease: its own retries and stalled-job recovery
        # may take the job over at once; another message for the same job may not.
        started = await self.store.jobs.mark_processing(
            job_id, at=now, attempt=attempt, lease_until=lease, owner=delivery.message_id
        )
        if started is None:
            return await self._not_taken(job_id, now, last_attempt)
        await self.notifier.job_changed(started)

        kept = delivery.data.get("result")
        if isinstance(kept, dict) and kept.get("content"):
            # An earlier attempt generated this but could not store it: no second LLM call.
            completion = Completion(
                content=kept["content"], model=kept.get("model") or "", usage=kept.get("usage")
            )
        else:
            try:
                completion = await self.llm.generate(
                    model_request(started.content_type, started.prompt)
                )
            except LLMError as exc:
                if exc.retryable and not last_attempt:
                    log.info("job %s attempt %d: %s (will retry)", job_id, attempt, exc.message)
                    raise RetryLater(exc.message, exc.retry_after) from None
                message = f"Generation failed: {exc.message}"
                await self._fail(job_id, message)
                raise GiveUp(message) from None

        await self._complete(delivery, started, completion)
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

    async def _complete(self, delivery: Delivery, started: Job, completion: Completion) -> None:
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
                    await delivery.keep({**delivery.data, "result": asdict(completion)})
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
