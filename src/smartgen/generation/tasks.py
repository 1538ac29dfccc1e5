"""The worker's task: load the job by id, generate, store, notify.

Safe to run twice (delivery is at least once): a job that is already final in the store
is never generated again, and a completion is written only over `processing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import nullcontext
from dataclasses import asdict, replace
from datetime import datetime, timedelta

from smartgen.config import Settings
from smartgen.errors import AppError
from smartgen.generation import budget
from smartgen.generation.prompts import model_request
from smartgen.kit.times import utcnow
from smartgen.llm.errors import LLMError
from smartgen.models import Completion, Job, JobStatus, job_from_wire, usage_numbers
from smartgen.ports import (
    BatchTurns,
    Budgets,
    Cancellations,
    Delivery,
    Generator,
    GiveUp,
    JobCancelled,
    LiveText,
    Notifier,
    RetryLater,
    RunLater,
    Timings,
)
from smartgen.store.base import Store

log = logging.getLogger(__name__)

INTERNAL_FAILURE = "generation failed because of an internal error; please try again"


# A delivery may take a job scheduled this much later than its own clock says (clock skew
# between hosts); a job rescheduled later than that is not due.
SCHEDULE_TOLERANCE = timedelta(seconds=2)


class LiveWriter:
    """Text as a running job writes it: `job_progress` events, at most one per `interval`
    seconds (what came meanwhile goes together), and the job's live text for `GET`."""

    def __init__(
        self, job: Job, notifier: Notifier, live: LiveText | None, interval: float
    ) -> None:
        self._job = job
        self._notifier = notifier
        self._live = live
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._pending: list[str] = []
        # The first announcement comes one interval after the start: an answer that comes
        # whole within it (a fast model, a short text) costs no progress events at all.
        self._flushed_at = self._loop.time()
        self.length = 0
        self.kept_live = False  # some of this run's text is in the live text
        self._announced = False  # some of this run's text went out as `job_progress`

    async def add(self, text: str) -> None:
        self._pending.append(text)
        self.length += len(text)
        if self._loop.time() - self._flushed_at >= self._interval:
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        delta = "".join(self._pending)
        self._pending.clear()
        self._flushed_at = self._loop.time()
        # A run's first piece replaces whatever an earlier run of the job left with the
        # clients (a worker that died mid-stream never said its text was void).
        first, self._announced = not self._announced, True
        await self._notifier.job_progress(self._job, delta=delta, length=self.length, reset=first)
        if self._live is not None:
            try:
                await self._live.append(self._job.job_id, delta, first=not self.kept_live)
                self.kept_live = True
            except Exception as exc:  # live text is a courtesy; the job goes on without it
                log.debug("job %s: live text not kept: %s", self._job.job_id, exc)

    async def reset(self) -> None:
        """The text so far is void (the stream broke): clients start again from nothing."""
        announced, self._announced = self._announced, False
        self.length = 0
        self._pending.clear()
        await self.discard(earlier_too=True)
        if announced:
            await self._notifier.job_progress(self._job, delta="", length=0, reset=True)

    async def finish(self) -> None:
        """The answer is complete. If any of it was announced, the rest is announced too
        (the deltas add up to the content); an answer that came whole within the first
        interval is announced only by the job's final state."""
        if self._announced:
            await self.flush()
        else:
            self._pending.clear()

    async def discard(self, *, earlier_too: bool = False) -> None:
        """Clear the live text this run kept (`earlier_too`: also what an earlier run that
        died mid-stream left, which this run did not replace yet)."""
        if self._live is not None and (self.kept_live or earlier_too):
            self.kept_live = False
            try:
                await self._live.clear(self._job.job_id)
            except Exception as exc:
                log.debug("job %s: live text not cleared: %s", self._job.job_id, exc)


class GenerationTask:
    """Runs one delivery of a generation job (`queue.runner` calls it)."""

    def __init__(
        self,
        *,
        store: Store,
        llm: Generator,
        notifier: Notifier,
        settings: Settings,
        live: LiveText | None = None,
        cancellations: Cancellations | None = None,
        timings: Timings | None = None,
        budgets: Budgets | None = None,
        turns: BatchTurns | None = None,
    ) -> None:
        self.budgets = budgets
        self.turns = turns
        self.store = store
        self.llm = llm
        self.notifier = notifier
        self.settings = settings
        self.live = live
        self.cancellations = cancellations
        self.timings = timings

    async def __call__(self, delivery: Delivery) -> str:
        job_id = str(delivery.data.get("jobId") or delivery.message_id)
        try:
            return await self._run(delivery, job_id)
        except RetryLater:
            await self._release(delivery, job_id)
            raise
        except (RunLater, GiveUp):
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
            await self._release(delivery, job_id)
            raise RetryLater(INTERNAL_FAILURE) from exc

    async def _release(self, delivery: Delivery, job_id: str) -> None:
        """The delivery gives the job back for a retry, which may run on another worker:
        its lease ends now (a no-op when it never took the job)."""
        try:
            await self.store.jobs.release_lease(job_id, owner=delivery.owner)
        except Exception as exc:  # the lease then runs out by itself
            log.debug("job %s: lease not released: %s", job_id, type(exc).__name__)

    async def _run(self, delivery: Delivery, job_id: str) -> str:
        attempt, last_attempt = delivery.attempt, delivery.last_attempt
        # One conditional write decides; the job is read only when it was not taken.
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        # The message on this worker owns the lease (`Delivery.owner`): its own retries
        # here may take the job back at once; any other delivery waits until the lease
        # ends (released on a retry, or by `queue.liveness` when this worker dies).
        started = await self.store.jobs.mark_processing(
            job_id,
            at=now,
            attempt=attempt,
            lease_until=lease,
            owner=delivery.owner,
            due_by=now + SCHEDULE_TOLERANCE,
            expected=job_from_wire(delivery.data.get("job")),  # the job as first stored
        )
        if started is None:
            return await self._not_taken(job_id, now, last_attempt)
        await self.notifier.job_changed(started)

        kept = delivery.data.get("result")
        if isinstance(kept, dict) and kept.get("content"):
            # An earlier attempt generated this but could not store it: no second LLM call.
            completion = Completion(
                content=kept["content"],
                model=kept.get("model") or "",
                usage=kept.get("usage"),
                finish_reason=kept.get("finish_reason"),
            )
            live_kept = True  # the attempt that generated it may have left live text
        else:
            generated = await self._generate(started, attempt, last_attempt)
            if generated is None:
                return "cancelled"
            completion, live_kept = generated

        await self._complete(delivery, started, completion, clear_live=live_kept)
        return "completed"

    async def _generate(
        self, job: Job, attempt: int, last_attempt: bool
    ) -> tuple[Completion, bool] | None:
        """Stream the model's answer, announcing the text as it comes: the answer, and
        whether live text was kept for it; None when the owner cancelled the job meanwhile
        (the model call is stopped, nothing is kept)."""
        writer = LiveWriter(job, self.notifier, self.live, self.settings.progress_interval_seconds)
        guard = self.cancellations.guard(job.job_id) if self.cancellations else nullcontext()
        completion: Completion | None = None
        request = model_request(
            job.content_type, job.prompt, job.options, previous=await self._previous(job)
        )
        try:
            with guard:
                async for piece in self.llm.generate_stream(request):
                    if isinstance(piece, Completion):
                        completion = piece
                    else:
                        await writer.add(piece)
            await writer.finish()
        except JobCancelled:
            await writer.discard()
            log.info("job %s cancelled while generating", job.job_id)
            return None
        except LLMError as exc:
            await writer.reset()  # partial text never becomes the content
            if exc.retryable and not last_attempt:
                log.info("job %s attempt %d: %s (will retry)", job.job_id, attempt, exc.message)
                raise RetryLater(exc.message, exc.retry_after) from None
            message = f"Generation failed: {exc.message}"
            await self._fail(job.job_id, message)
            raise GiveUp(message) from None
        if completion is None:  # pragma: no cover - every stream ends with its Completion
            raise LLMError("the model's stream ended without an answer", retryable=True)
        return completion, writer.kept_live

    async def _previous(self, job: Job) -> str | None:
        """A variation's original text, which the new take must differ from."""
        if job.parent_job_id is None:
            return None
        parent = await self.store.jobs.get(job.parent_job_id)
        if parent is None or parent.user_id != job.user_id:
            return None
        return parent.generated_content

    async def _settle(self, job: Job, completion: Completion) -> None:
        """The job's budget reservation becomes what it really used; a budget_warning
        when that took a budget past 80 %. Never fails the job."""
        if self.budgets is None or not budget.budgets_on(self.settings):
            return
        _, _, total, cost = usage_numbers(completion.usage)
        try:
            state = await self.budgets.settle(job.job_id, tokens=total, cost=cost)
            if state is not None:
                await budget.warn(
                    self.settings, self.budgets, self.notifier, job.user_id, state, job.created_at
                )
        except Exception as exc:
            log.warning("job %s: budget not settled: %s", job.job_id, type(exc).__name__)

    async def _not_taken(self, job_id: str, now: datetime, last_attempt: bool) -> str:
        """Another delivery of the same job holds it (or it just finished), or it was
        rescheduled later than now."""
        current = await self.store.jobs.get(job_id)
        if current is None:
            log.info("job %s is not in the store; dropping it", job_id)
            return "missing"
        if current.status.is_final:
            # Its delivery may have ended with a worker that crashed before announcing the
            # final state: announce it (the event log keeps a final event once per run),
            # and settle or release its budget reservation (a no-op when that was done).
            await self.notifier.job_changed(current, settled=True, repeat=True)
            if current.status == JobStatus.completed:
                kept = Completion(
                    current.generated_content or "", current.model or "", current.usage
                )
                await self._settle(current, kept)
            else:
                await budget.release(self.budgets, job_id)
            await self._next_turns(current)
            return f"already {current.status.value}"
        if current.status == JobStatus.queued and current.scheduled_for > now + SCHEDULE_TOLERANCE:
            raise RunLater(current.scheduled_for)
        held_for = (current.lease_until - now).total_seconds() if current.lease_until else 0.0
        if last_attempt:
            # The holder finishes it; if it dies, the reconciler queues the job again.
            return "held by another delivery"
        raise RetryLater("another delivery of this job is running", max(0.5, held_for + 0.5))

    async def _complete(
        self, delivery: Delivery, started: Job, completion: Completion, *, clear_live: bool
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
                    await delivery.keep({**delivery.data, "result": asdict(completion)})
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if self.live is not None and clear_live:
            with contextlib.suppress(Exception):
                await self.live.clear(job_id)
        if written:
            if self.timings is not None and started.started_at is not None:
                seconds = (at - started.started_at).total_seconds()
                await self.timings.record(started.content_type, seconds)
            final = replace(
                started,
                status=JobStatus.completed,
                generated_content=completion.content,
                model=completion.model,
                usage=completion.usage,
                finish_reason=completion.finish_reason,
                cost=usage_numbers(completion.usage)[3],
                completed_at=at,
                updated_at=at,
            )
            # Announced (logged) before the queue hears the job is done: a crash between
            # the two leaves the message, whose next delivery announces it again (and
            # settles its budget, if this one did not get to).
            await self.notifier.job_changed(final, settled=True)
            await self._settle(started, completion)
            await self._next_turns(final)

    async def _next_turns(self, job: Job) -> None:
        """A batch's job ended: its batch lets its next waiting job into the queue."""
        if job.batch_id is not None and self.turns is not None:
            await self.turns.next_turns(job.batch_id)

    async def _fail(self, job_id: str, message: str) -> None:
        try:
            if await self.store.jobs.mark_failed(job_id, error=message, at=utcnow()):
                await budget.release(self.budgets, job_id)
                final: Job | None = await self.store.jobs.get(job_id)
                if final is not None:
                    await self.notifier.job_changed(final, settled=True)
                    await self._next_turns(final)
        except AppError:
            log.error("job %s: could not record failure (store unavailable)", job_id)
        except Exception as exc:  # the event log: the failure itself is recorded
            log.warning("job %s: failure not announced: %s", job_id, type(exc).__name__)
