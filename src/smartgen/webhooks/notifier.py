"""Job events as webhooks: a `ports.Notifier` that hands every change on to the notifier
it wraps (the event log, Socket.IO) and, when a job has ended, announces `job.completed`,
`job.failed` or `job.cancelled` (`service.announce`: deliveries written and queued, never
sent here). Wrapped around the notifier of the worker (completions, failures) and of the
API (cancellations), it catches each end wherever it is decided.

The worker's remembers each user's endpoints (`endpoints.CachedEndpoints`): a job's end
then costs no store read, and nothing more when nobody receives its event."""

from __future__ import annotations

import logging
from typing import Any

from smartgen.generation.schemas import job_out
from smartgen.kit.times import iso_ms
from smartgen.models import Job, JobStatus
from smartgen.ports import Notifier, WebhookQueue
from smartgen.store.base import Store
from smartgen.webhooks import service
from smartgen.webhooks.endpoints import CachedEndpoints

log = logging.getLogger("smartgen.webhooks")
EVENTS = {
    JobStatus.completed: "job.completed",
    JobStatus.failed: "job.failed",
    JobStatus.cancelled: "job.cancelled",
}


def job_event_data(job: Job) -> dict[str, Any]:
    """The job as `GET /generate-content/{jobId}` shows it."""
    return job_out(job).model_dump(mode="json", exclude_none=True)


class WebhookNotifier:
    def __init__(
        self,
        inner: Notifier,
        *,
        store: Store,
        queue: WebhookQueue,
        endpoints: CachedEndpoints | None = None,
    ) -> None:
        self.inner = inner
        self._store = store
        self._queue = queue
        self._endpoints = endpoints

    async def job_changed(self, job: Job, *, settled: bool = False, repeat: bool = False) -> None:
        await self.inner.job_changed(job, settled=settled, repeat=repeat)
        event = EVENTS.get(job.status)
        if event is None:
            return
        url = (job.options or {}).get("webhookUrl")
        job_url = url if isinstance(url, str) else None
        try:
            if self._endpoints is not None:
                endpoints = await self._endpoints.for_user(job.user_id)
            else:
                endpoints = await self._store.webhooks.list_for_user(job.user_id, limit=1000)
            if not service.targets(endpoints, event, job_url):
                return  # nobody to tell: the job's payload is not even built
            await service.announce(
                event,
                job.user_id,
                job_event_data(job),
                store=self._store,
                queue=self._queue,
                job_webhook_url=job_url,
                # The job and the moment it ended: the same event announced again (a
                # repeat) is the same delivery.
                event_key=f"{event}:{job.job_id}:{iso_ms(job.updated_at)}",
                endpoints=endpoints,
            )
        except Exception:  # the job's own outcome is recorded; its webhooks are extra
            log.exception("job %s: webhooks for %s not announced", job.job_id, event)

    async def job_progress(self, job: Job, *, delta: str, length: int, reset: bool) -> None:
        await self.inner.job_progress(job, delta=delta, length=length, reset=reset)

    async def user_event(self, user_id: str, event: str, payload: dict[str, Any]) -> None:
        await self.inner.user_event(user_id, event, payload)
