"""The events a job's changes produce, and the publisher that sends them without ever
holding up a request or a job.

Events (the first one is the seed's contract, exactly):
- `job_completed` {userId, jobId, status: "completed", generatedContent, completedAt}
- `job_failed`    {userId, jobId, status: "failed", error, failedAt, seq}
- `job_status`    {userId, jobId, status, at, seq}   for every transition
- `job_progress`  {userId, jobId, seq, delta, length, reset?}   text as it is written
- `budget_warning` {userId, budget, limit, used, percent, month, resetsAt, seq}   a
  monthly budget passed 80 %
- `batch_progress` / `batch_completed` {userId, batchId, total, accepted, rejected,
  counts, progress, costUsd, seq} (+ status, completedAt)   `batches.runner`'s

Each is numbered in its user's event log (`log.py`) before it is sent: `seq` is in every
payload but the seed's `job_completed`, which Socket.IO clients get with `seq` only when
they ask for it at the handshake (they are then in the user's second room, `seq_room`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from smartgen.kit.times import iso_ms
from smartgen.metrics import catalog
from smartgen.models import Job, JobStatus

log = logging.getLogger(__name__)

# (event name, payload, the user's room, seq or None): what the bus sends.
Event = tuple[str, dict[str, Any], str, int | None]
EmitBatch = Callable[[list[Event]], Awaitable[None]]
# Not numbered inside its payload, as the seed defines it.
SEED_EVENT = "job_completed"


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


def seq_room(room: str) -> str:
    """The room of the same user's sockets that asked for `seq` in every payload."""
    return "seq:" + room.removeprefix("user:")


def with_seq(event: str, payload: dict[str, Any], seq: int | None) -> dict[str, Any]:
    """The payload as the seq room gets it."""
    return payload if seq is None or event != SEED_EVENT else {**payload, "seq": seq}


def numbered(event: str, payload: dict[str, Any], seq: int | None) -> dict[str, Any]:
    """The payload with its number in the user's log, as every client gets it (the seed's
    `job_completed` keeps its own shape: its number goes to the seq room, `with_seq`)."""
    return payload if seq is None or event == SEED_EVENT else {**payload, "seq": seq}


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


def progress_payload(job: Job, *, delta: str, length: int, reset: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "userId": job.user_id,
        "jobId": job.job_id,
        "delta": delta,
        "length": length,
    }
    if reset:
        payload["reset"] = True
    return payload


class Numbering(Protocol):
    async def append(
        self,
        events: list[tuple[str, str, Any, str | None]],
        now_ms: int,
        *,
        publish: tuple[str, str] | None = None,
    ) -> list[int]: ...


class LoggedRelay(Protocol):
    """A bus that can have the event log's own call publish a batch (`batched_relay`)."""

    def publish_plan(self, events: list[Event]) -> tuple[str, str] | None:
        """(channel, head) of the message announcing `events` (their `seq` still None),
        to which the log's call adds the numbers; None: publish separately (`emit`)."""
        ...

    async def deliver_here(self, events: list[Event]) -> None:
        """`events`, numbered, to this process's own clients only."""
        ...


# (user, event, payload, once key, a future for a caller waiting until it is logged)
Pending = tuple[str, str, dict[str, Any], str | None, "asyncio.Future[None] | None"]
FINAL_EVENTS = frozenset({"job_completed", "job_failed"})


def once_key(job: Job, event: str) -> str | None:
    """Final events are logged once per run of a job (`history` counts earlier runs)."""
    if not job.status.is_final or (event not in FINAL_EVENTS and event != "job_status"):
        return None
    return f"{job.job_id}:{len(job.history or [])}:{event}:{job.status.value}"


class EventPublisher:
    """`ports.Notifier`: hands events to a background task, so a slow Redis or an absent
    client never holds up a request or a job. Each batch is numbered in the users' event
    logs (`numbering`), then sent. Delivery is at most once: clients catch up from the log
    (`sync` with `afterSeq`, `GET /events`)."""

    def __init__(
        self,
        emit: EmitBatch,
        *,
        numbering: Numbering | None = None,
        relay: LoggedRelay | None = None,
        max_pending: int = 10_000,
        batch: int = 256,
        spacing: float = 0.0,
    ) -> None:
        self._emit = emit
        self._spacing = spacing
        self._numbering = numbering
        self._relay = relay
        self._batch = batch
        # What waits to be sent, in order (None: stop), at most `max_pending`; a deque and
        # one future to wake the sender rather than an asyncio.Queue, whose put and get
        # cost five Python calls an event on the busiest path (bench/HISTORY.md).
        self._pending: deque[Pending | None] = deque()
        self._max_pending = max_pending
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.sent = 0

    def number_with(self, numbering: Numbering) -> None:
        self._numbering = numbering

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="smartgen-event-publisher")

    async def job_changed(self, job: Job, *, settled: bool = False, repeat: bool = False) -> None:
        """Announce a job's state. `settled`: return once its events are in the log
        (raising if they could not be logged), so that a worker acknowledges a job only
        after its final state is announced."""
        waits: list[asyncio.Future[None]] = []
        for event, payload in job_events(job):
            future = asyncio.get_running_loop().create_future() if settled else None
            if self._put(job, event, payload, once_key(job, event), future) and future:
                waits.append(future)
        if waits:
            await asyncio.gather(*waits)

    async def job_progress(self, job: Job, *, delta: str, length: int, reset: bool) -> None:
        payload = progress_payload(job, delta=delta, length=length, reset=reset)
        self._put(job, "job_progress", payload, None, None)

    async def user_event(self, user_id: str, event: str, payload: dict[str, Any]) -> None:
        self._put_for(user_id, event, {"userId": user_id, **payload}, None, None)

    def _put(
        self,
        job: Job,
        event: str,
        payload: dict[str, Any],
        once: str | None,
        future: asyncio.Future[None] | None,
    ) -> bool:
        return self._put_for(job.user_id, event, payload, once, future, job.job_id)

    def _put_for(
        self,
        user_id: str,
        event: str,
        payload: dict[str, Any],
        once: str | None,
        future: asyncio.Future[None] | None,
        job_id: str | None = None,
    ) -> bool:
        self.start()
        if self._put_nowait((user_id, event, payload, once, future)):
            return True
        self.dropped += 1
        catalog.events_dropped(1)
        log.warning("event queue full: dropped %s for job %s", event, job_id)
        if future is not None:
            future.set_exception(RuntimeError("the event queue is full"))
            return True
        return False

    def _put_nowait(self, item: Pending | None) -> bool:
        """Queue `item` for the sender; False when `max_pending` are already waiting."""
        if len(self._pending) >= self._max_pending:
            return False
        self._pending.append(item)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        return True

    async def _send(self, batch: list[Pending]) -> None:
        seqs: list[int | None] = [None] * len(batch)
        plan: tuple[str, str] | None = None
        if self._numbering is not None:
            now_ms = int(time.time() * 1000)
            entries = [(user, event, payload, once) for user, event, payload, once, _ in batch]
            if self._relay is not None:
                # Logged and published in one round trip: the log's call adds the numbers.
                plan = self._relay.publish_plan(
                    [(event, payload, user_room(user), None) for user, event, payload, *_ in batch]
                )
            seqs = list(await self._numbering.append(entries, now_ms, publish=plan))
        for *_, future in batch:
            if future is not None and not future.done():
                future.set_result(None)  # logged: the announcement holds from here on
        events: list[Event] = []
        for (user_id, event, payload, _, _), seq in zip(batch, seqs, strict=True):
            if seq == 0:
                continue  # announced before: logged and sent then
            events.append((event, numbered(event, payload, seq), user_room(user_id), seq))
        if not events:
            return
        if plan is not None and self._relay is not None:
            await self._relay.deliver_here(events)  # the other processes had it published
        else:
            await self._emit(events)

    async def _run(self) -> None:
        # Everything pending goes out together, in order, in one round trip: one PUBLISH
        # at a time let a busy worker's events fall seconds behind the store.
        # A busy publisher sends at most once per `spacing` seconds (as a
        # `batching.Coalescer` flushes): the events of jobs close together go in one trip.
        pending = self._pending
        loop = asyncio.get_running_loop()
        last_send = -math.inf
        stopping = False
        while not stopping:
            while not pending:
                self._wakeup = loop.create_future()
                await self._wakeup
            wait = last_send + self._spacing - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last_send = loop.time()
            item = pending.popleft()
            batch: list[Pending] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= self._batch or not pending:
                    break
                item = pending.popleft()
            stopping = item is None
            if not batch:
                continue
            try:
                await self._send(batch)
                self.sent += len(batch)
                catalog.events_published(len(batch))
            except Exception as exc:  # delivery is best effort; the store stays the truth
                self.dropped += len(batch)
                catalog.events_dropped(len(batch))
                log.warning("could not publish %d events: %s", len(batch), type(exc).__name__)
                for *_, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(exc)

    async def close(self, grace: float = 5.0) -> None:
        """Send what is pending (bounded by `grace`), then stop."""
        if self._task is None:
            return
        self._put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
