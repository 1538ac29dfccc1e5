"""Job metrics from the jobs' own announcements: every state change a service, task or the
reconciler makes is announced through `ports.Notifier`, so a notifier that counts before
passing the change on sees all of them, in the API (queued) and the worker (the rest),
without a line in the domain code."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from smartgen.metrics import catalog
from smartgen.models import Job, JobStatus
from smartgen.ports import Notifier


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


_child = catalog.child  # label values from closed sets: content types, statuses


def record_job_change(job: Job) -> None:
    """Count one announced state change of `job`."""
    content_type = job.content_type
    status = job.status
    if status == JobStatus.processing:
        if job.attempts > 1:
            _child(catalog.JOB_RETRIES, content_type).inc()
        else:
            waited = _seconds(job.scheduled_for, job.started_at)
            if waited is not None:
                _child(catalog.QUEUE_WAIT, content_type).observe(waited)
        return
    _child(catalog.JOBS, content_type, status.value).inc()
    if status.is_final:
        ended = job.completed_at if status == JobStatus.completed else job.failed_at
        took = _seconds(job.started_at, ended or job.updated_at)
        if took is not None:
            _child(catalog.PROCESSING, content_type, status.value).observe(took)


class MeteredNotifier:
    """`ports.Notifier` that counts each change, then hands it to `inner` (a change
    announced again, `repeat`, is not counted twice)."""

    def __init__(self, inner: Notifier) -> None:
        self.inner = inner

    async def job_changed(self, job: Job, *, settled: bool = False, repeat: bool = False) -> None:
        if not repeat:
            record_job_change(job)
        await self.inner.job_changed(job, settled=settled, repeat=repeat)

    async def job_progress(self, job: Job, *, delta: str, length: int, reset: bool) -> None:
        await self.inner.job_progress(job, delta=delta, length=length, reset=reset)

    async def user_event(self, user_id: str, event: str, payload: dict[str, Any]) -> None:
        await self.inner.user_event(user_id, event, payload)
