"""Completing a job and taking the next one in one script call (`WORKER_FETCH_NEXT`, on by
default).

Node's BullMQ does so (`moveToFinished` with fetchNext: one round trip per job on a busy
queue). bullmq for Python completes with `fetch_next=False` and then runs `moveToActive`
for the next job in a task of its own: a second script call and a second turn of its loop
per job. Here each `processJob` task asks for the next job as it completes its own and
returns it, and bullmq's loop processes a task's returned job as it does one from
`getNextJob`. Not while closing or paused. bullmq's own `processJob` runs unchanged; only
its completion call fetches. This swaps a method of bullmq's backend, so bullmq is pinned
to the versions it was checked against (pyproject.toml), and `WORKER_FETCH_NEXT=false`
runs bullmq's stock Worker; the worker tests run both.

It also keeps an idle worker idle: bullmq's loop starts WORKER_CONCURRENCY `getNextJob`
tasks at once; on a drained queue the first waits for a job (BZPOPMIN, 5 s at a time) and
every other one runs `moveToActive` for nothing, again after each wait (with many slots,
Redis's busiest work and the worker's CPU at idle: bench/idle.py). Here a task that
finds the queue drained while another task waits returns at once; the waiting one takes
the next job, and bullmq's loop then fills the other slots as usual.
"""

from __future__ import annotations

import contextvars
from typing import Any

import bullmq

# The next job's data fetched by the completion of the job this task processes.
_fetched: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "smartgen_fetched", default=None
)


class FetchNextWorker(bullmq.Worker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        complete = self.backend.moveToCompleted

        async def complete_and_fetch(
            job: Any, value: Any, remove: Any, token: str, fetch_next: bool = True
        ) -> Any:
            # bullmq's processJob passes fetch_next=False; whether to fetch is decided here.
            fetched = _fetched.get()
            fetch = fetched is not None and not (self.closing or self.paused)
            outcome = await complete(job, value, remove, token, fetch_next=fetch)
            if fetch and fetched is not None:
                fetched.append((outcome or {}).get("result"))
            return outcome

        self.backend.moveToCompleted = complete_and_fetch

    async def getNextJob(self, token: str) -> Any:
        if self.drained and self.waiting is not None and not self.closing:
            return None
        return await super().getNextJob(token)

    async def processJob(self, job: Any, token: str) -> Any:
        fetched: list[Any] = []
        _fetched.set(fetched)  # this task's own context (bullmq runs each in a task)
        await super().processJob(job, token)
        if not fetched or not fetched[0]:
            return None
        job_data, job_id, limit_until, delay_until = fetched[0]
        return await self.nextJobFromJobData(
            job_data, job_id, limit_until or 0, delay_until or 0, token
        )
