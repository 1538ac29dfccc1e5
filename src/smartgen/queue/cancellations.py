"""The worker's side of a cancel: `ports.Cancellations` on a Redis subscription.

The API announces each cancel of a running job on the deployment's cancel channel
(`producer.GenerationQueue.cancel`). Every worker listens; the one running the job cancels
the asyncio task waiting on the model (its connection closes, so the provider stops
billing), and the task ends with `ports.JobCancelled`. Only a task inside `guard()` can be
cancelled this way, so a cancel never interrupts bullmq's own bookkeeping.

A cancel published while this worker's subscription is down would be missed: on every
(re)subscription the listener asks the store about each job it guards (`is_cancelled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import redis.asyncio as aioredis

from smartgen.ports import JobCancelled

log = logging.getLogger(__name__)


class CancelListener:
    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        *,
        is_cancelled: Callable[[str], Awaitable[bool]],
    ) -> None:
        self._client = client
        self._channel = channel
        self._is_cancelled = is_cancelled
        self._guarded: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="smartgen-cancel-listener")

    @contextlib.contextmanager
    def guard(self, job_id: str) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None, "guard() is used inside a task"
        self._guarded[job_id] = task
        try:
            yield
        except asyncio.CancelledError:
            if job_id not in self._cancelled:
                raise  # a shutdown or a timeout, not the owner's cancel
            task.uncancel()
            raise JobCancelled(job_id) from None
        finally:
            self._guarded.pop(job_id, None)
            self._cancelled.discard(job_id)

    def _cancel(self, job_id: str) -> None:
        task = self._guarded.get(job_id)
        if task is not None and job_id not in self._cancelled:
            self._cancelled.add(job_id)
            task.cancel()
            log.info("job %s cancelled by its owner: model call stopped", job_id)

    async def _catch_up(self) -> None:
        """Cancels published while we were not subscribed: ask the store."""
        for job_id in list(self._guarded):
            try:
                if await self._is_cancelled(job_id):
                    self._cancel(job_id)
            except Exception as exc:  # the store may be down too; the next round asks again
                log.warning("could not check job %s for a cancel: %s", job_id, exc)

    async def _listen(self) -> None:
        pause = 1.0
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        self.subscribed.set()
                        pause = 1.0
                        await self._catch_up()
                    elif message["type"] == "message":
                        data = message["data"]
                        self._cancel(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                log.warning("cancel subscription lost (%s); retrying in %.0fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
