"""Completing a job and taking the next one in one script call (`WORKER_FETCH_NEXT`, on by
default).

Node's BullMQ does so (`moveToFinished` with fetchNext: one round trip per job on a busy
queue). bullmq for Python completes with `fetch_next=False` and then runs `moveToActive`
for the next job in a task of its own: a second script call and a second turn of its loop
per job. Here each `processJob` task asks for the next job as it completes its own and
returns it, and bullmq's loop processes a task's returned job as it does one from
`getNextJob`. Not while closing or paused. bullmq's own `processJob` runs unchanged; only
its completion call fetches.

It also keeps idle slots quiet. bullmq's loop starts a `getNextJob` for every free slot;
while the queue is empty one of them blocks on the queue's marker and every other one runs
`moveToActive` at once, so each job that arrives at an idle worker of concurrency 50 costs
about 50 script calls that find nothing. Here a free slot that finds the queue drained and
another slot already waiting on it sleeps in-process instead; a slot that gets a job wakes
one sleeper, which asks for the next (a burst is taken one after another, each fetch
waking the next; an empty answer ends the chain). The same holds for a worker with
nothing to do: after each of the waiting slot's 5 s waits, bullmq's loop had every other
slot run `moveToActive` again (bench/idle.py: at WORKER_CONCURRENCY=1000, 200 script calls
a second and 6 % of a core with an empty queue).

This swaps a method of bullmq's backend and overrides two of its Worker's, so bullmq is
pinned to the versions it was checked against (pyproject.toml), and `WORKER_FETCH_NEXT=false`
runs bullmq's stock Worker; the worker tests run both.

bullmq's loop waits for its next finished task with `asyncio.wait` over every task in
flight, which adds and removes a callback on each of them at every wake: 0.05 ms a wake at
50 slots, 0.54 ms at 1,000 (bench/HISTORY.md, tenth round), once per job or more. Here
(`run`, bullmq's loop otherwise unchanged) each task says it finished by a callback of its
own, so a wake costs the same whatever the concurrency.

A closing worker takes nothing new. bullmq's loop stops as soon as a turn of it, while
closing, sees no job come back, and a fetch still in flight that then takes one (a woken
slot, the blocking wait answered as `close` begins, a completion's fetch) would leave it
active under this worker's lock with nobody running it: a job lost for a lock's length
plus a stalled check (a minute). Here a slot woken by `close` returns without asking, and
a job taken while closing is handed back to the front of the queue at once
(bullmq's `moveJobFromActiveToWait`, its attempt not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import traceback
from collections import deque
from typing import Any

import bullmq
from bullmq.redis_connection import loadScript
from bullmq.timer import Timer
from bullmq.utils import extract_result

# The next job's data fetched by the completion of the job this task processes.
_fetched: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "smartgen_fetched", default=None
)


class FetchNextWorker(bullmq.Worker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sleepers: deque[asyncio.Future[None]] = deque()
        self._hand_back: Any = None
        self._finished: deque[asyncio.Future[Any]] = deque()  # tasks done, not yet seen
        self._wakeup: asyncio.Future[None] | None = None
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

    async def run(self) -> None:
        """bullmq's `Worker.run` (3.4.x) with one change: the tasks that finished are the
        ones whose callback said so (`_track`), not those `asyncio.wait` finds among all."""
        if self.running:  # type: ignore[has-type]
            raise Exception("Worker is already running")
        self._finished.clear()
        await self._ensure_client_names()
        self.lockManager.start()
        self.stalledCheckTimer = Timer(
            self.opts.get("stalledInterval") / 1000, self.runStalledJobsCheck, self.emit
        )
        self.running = True
        token_postfix = 0
        try:
            while not self.closed:
                if self.paused and not self.closing:
                    await self.resume_event.wait()
                    continue
                while (
                    not self.waiting
                    and len(self.processing) < self.opts.get("concurrency")
                    and not self.closing
                    and not self.paused
                ):
                    token_postfix += 1
                    self._track(self._next_job_task(f"{self.id}:{token_postfix}"))
                try:
                    jobs = await self._finished_jobs()
                    for job in jobs:
                        self._track(asyncio.ensure_future(self.processJob(job, job.token)))
                    if (not jobs or not self.processing) and self.closing:
                        break  # done processing: the queue may close
                except Exception:  # as bullmq's loop: never spin on an error
                    traceback.print_exc()
                    return
        finally:
            # As bullmq's: background work ends with the loop, however it ends.
            self.running = False
            if not self.closing:
                for task in self.processing:
                    if not task.done():
                        task.cancel()
                if self.waiting and not self.waiting.done():
                    self.waiting.cancel()
                if self.processing:
                    await asyncio.gather(*self.processing, return_exceptions=True)
                self.processing.clear()
            if self.stalledCheckTimer is not None:
                with contextlib.suppress(Exception):
                    self.stalledCheckTimer.stop()
            await self.lockManager.close()

    def _next_job_task(self, token: str) -> asyncio.Future[Any]:
        async def get_next_job() -> Any:
            return await self.getNextJob(token)

        options = {"delay_in_ms": self.opts.get("runRetryDelay"), "only_emit_error": True}
        task: asyncio.Future[Any] = asyncio.ensure_future(self.retryIfFailed(get_next_job, options))
        return task

    def _track(self, task: asyncio.Future[Any]) -> None:
        self.processing.add(task)
        task.add_done_callback(self._finished_one)

    def _finished_one(self, task: asyncio.Future[Any]) -> None:
        self._finished.append(task)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _finished_jobs(self) -> list[Any]:
        """The jobs the tasks that finished since the last call returned (a fetch or a
        completion that took the next job), waiting for one to finish if none did; as
        bullmq's `getCompleted`, nothing at once when no task is in flight."""
        if not self.processing:
            await asyncio.sleep(0)
            return []
        while not self._finished:
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        jobs = []
        while self._finished:
            task = self._finished.popleft()
            self.processing.discard(task)
            job = extract_result(task, self.emit)
            if job is not None:
                jobs.append(job)
        return jobs

    async def processJob(self, job: Any, token: str) -> Any:
        fetched: list[Any] = []
        _fetched.set(fetched)  # this task's own context (bullmq runs each in a task)
        await super().processJob(job, token)
        if not fetched or not fetched[0]:
            return None
        job_data, job_id, limit_until, delay_until = fetched[0]
        job = await self.nextJobFromJobData(
            job_data, job_id, limit_until or 0, delay_until or 0, token
        )
        return await self._unless_closing(job, token)

    async def getNextJob(self, token: str) -> Any:
        while self.drained and self.waiting is not None and not self.closing:
            sleeper: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._sleepers.append(sleeper)
            try:
                await sleeper
            finally:
                with contextlib.suppress(ValueError):
                    self._sleepers.remove(sleeper)
        if self.closing:
            return None
        job = await self._unless_closing(await super().getNextJob(token), token)
        if job is not None:
            self._wake(1)
        return job

    async def _unless_closing(self, job: Any, token: str) -> Any:
        """`job`, or None when this worker began closing after taking it: then it goes back
        to the queue for another worker (or this one's successor)."""
        if job is None or not self.closing:
            return job
        scripts = self.backend.scripts
        keys = scripts.getKeys(
            [
                "active",
                "wait",
                "stalled",
                "paused",
                "meta",
                "limiter",
                "prioritized",
                "marker",
                "events",
            ]
        )
        if self._hand_back is None:  # shipped by bullmq, loaded only by its Node side
            self._hand_back = self.redisConnection.conn.register_script(
                loadScript("moveJobFromActiveToWait-9.lua")
            )
        await self._hand_back(keys=keys, args=[job.id, token, scripts.toKey(job.id)])
        return None

    def _wake(self, count: int) -> None:
        while count > 0 and self._sleepers:
            sleeper = self._sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)
                count -= 1

    async def close(self, force: bool = False) -> None:
        self.closing = True  # bullmq's close sets it too; the sleepers must see it now
        self._wake(len(self._sleepers))
        await super().close(force)
