"""The events a job's changes produce, and the publisher that sends them without ever
holding up a request or a job.

Events, each to the room `user:<id>` (the first one is the seed's contract, exactly):
- `job_completed` {userId, jobId, status: "completed", generatedContent, completedAt}
- `job_failed`    {userId, jobId, status: "failed", error, failedAt}
- `job_status`    {userId, jobId, status, at}   for every transition
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from smartgen.kit.times import iso_ms
from smartgen.metrics import catalog
from smartgen.models import Job, JobStatus

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any], str]  # (event name, payload, room)
EmitBatch = Callable[[list[Event]], Awaitable[None]]


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


def status_payload(job: Job) -> dict[str, Any]:
    return {
        "userId": job.user_id,
        "jobId": job.job_id,
        "status": job.status.value,
        "at": iso_ms(job.updated_at),
    }


def job_events(job: Job) -> list[tuple[str, dict[str, Any]]]:
    """The events one state change produces, in the order they are sent."""
    events: list[tuple[str, dict[str, Any]]] = [("job_status", status_payload(job))]
    if job.status == JobStatus.completed:
        events.append(
            (
                "job_completed",
                {
                    "userId": job.user_id,
                    "jobId": job.job_id,
                    "status": "completed",
                    "generatedContent": job.generated_content,
                    "completedAt": iso_ms(job.completed_at or job.updated_at),
                },
            )
        )
    elif job.status == JobStatus.failed:
        events.append(
            (
                "job_failed",
                {
                    "userId": job.user_id,
                    "jobId": job.job_id,
                    "status": "failed",
                    "error": job.error,
                    "failedAt": iso_ms(job.failed_at or job.updated_at),
                },
            )
        )
    return events


class EventPublisher:
    """`ports.Notifier`: hands events to a background task, so a slow Redis or an absent
    client never holds up a request or a job. Delivery is at most once: clients resync
    with `sync`."""

    def __init__(self, emit: EmitBatch, *, max_pending: int = 10_000, batch: int = 256) -> None:
        self._emit = emit
        self._batch = batch
        self._pending: asyncio.Queue[Event | None] = asyncio.Queue(max_pending)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.sent = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="smartgen-event-publisher")

    async def job_changed(self, job: Job) -> None:
        self.start()
        room = user_room(job.user_id)
        for event, payload in job_events(job):
            try:
                self._pending.put_nowait((event, payload, room))
            except asyncio.QueueFull:
                self.dropped += 1
                catalog.events_dropped(1)
                log.warning("event queue full: dropped %s for job %s", event, job.job_id)

    async def _run(self) -> None:
        # Everything pending goes out together, in order, in one round trip: one PUBLISH
        # at a time let a busy worker's events fall seconds behind the store.
        stopping = False
        while not stopping:
            item = await self._pending.get()
            batch: list[Event] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= self._batch or self._pending.empty():
                    break
                item = self._pending.get_nowait()
            stopping = item is None
            if not batch:
                continue
            try:
                await self._emit(batch)
                self.sent += len(batch)
                catalog.events_published(len(batch))
            except Exception as exc:  # delivery is best effort; the store stays the truth
                self.dropped += len(batch)
                catalog.events_dropped(len(batch))
                log.warning("could not publish %d events: %s", len(batch), type(exc).__name__)

    async def close(self, grace: float = 5.0) -> None:
        """Send what is pending (bounded by `grace`), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._pending.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
