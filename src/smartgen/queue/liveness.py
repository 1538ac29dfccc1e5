"""Workers that die are noticed within seconds, and their jobs run again at once.

bullmq alone notices a dead worker when the job's lock runs out (`LOCK_DURATION_MS`,
30 s) and its next stalled-job check (`STALLED_INTERVAL_MS`, 30 s) moves the message back
to wait: about a minute with the job shown `processing`. Shorter locks would cost a
renewal call per job every few seconds, and a worker whose event loop is slow to renew
them (a long CPU-bound step) would lose jobs it is still running.

Here each worker beats instead: a thread of its own (its own event loop and Redis
connection, so a busy event loop in the worker does not stop it) records the worker in a
sorted set every `WORKER_HEARTBEAT_SECONDS`, scored by Redis's clock (hosts' clocks do not
matter), and in the same script call claims the workers whose last beat is older than
`WORKER_DEAD_AFTER_SECONDS`, removing them from the set, so exactly one live worker
claims each dead one. The claimer's `on_dead` (on the worker's own loop) ends the dead
worker's leases in the store and queues its jobs again (`generation.reconcile`).

A worker that stops gracefully leaves the set; one that stops with jobs still running
(its grace period ran out) does not, so those jobs are claimed like a dead worker's.
Idle cost: one short script call per worker per beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from smartgen.config import Settings
from smartgen.redis_clients import redis_client

log = logging.getLogger(__name__)

# KEYS[1]: the set; ARGV: this worker, seconds after which a silent worker is dead.
# Returns the dead workers this call claimed (removed from the set).
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, 100)
for _, name in ipairs(dead) do
  redis.call('ZREM', KEYS[1], name)
end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 10) + 60)
return dead
"""


def workers_key(settings: Settings) -> str:
    return f"{settings.queue_prefix}:{settings.queue_name}:smartgen:workers"


class Heartbeat:
    """The beating thread of one worker named `name`. `on_dead(worker)` runs on the
    caller's loop for each dead worker this one claims; it must not raise."""

    def __init__(
        self, settings: Settings, name: str, on_dead: Callable[[str], Coroutine[Any, Any, Any]]
    ) -> None:
        self._settings = settings
        self.name = name
        self._on_dead = on_dead
        self._interval = settings.worker_heartbeat_seconds
        self._dead_after = settings.worker_dead_after_seconds
        self._key = workers_key(settings)
        self._owner_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._leave = True
        self._started = threading.Event()
        self.beats = 0

    def start(self) -> None:
        if self._interval <= 0 or self._thread is not None:
            return
        self._owner_loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="smartgen-heartbeat", daemon=True)
        self._thread.start()
        self._started.wait(5)

    async def stop(self, *, leave: bool) -> None:
        """Stop beating. `leave`: take this worker out of the set (it ran everything it
        took); otherwise its silence makes it look dead, and its jobs are claimed."""
        if self._thread is None:
            return
        self._leave = leave
        if self._thread_loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._thread_loop.call_soon_threadsafe(self._stopping.set)
        await asyncio.to_thread(self._thread.join, 10)
        self._thread = None

    def _run(self) -> None:
        asyncio.run(self._beat_forever())

    async def _beat_forever(self) -> None:
        self._thread_loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._started.set()
        client = redis_client(self._settings, "request")
        beat = client.register_script(BEAT)
        quiet = False
        try:
            while not self._stopping.is_set():
                try:
                    async with asyncio.timeout(max(self._interval, 1.0)):
                        dead = await beat(keys=[self._key], args=[self.name, self._dead_after])
                    self.beats += 1
                    if quiet:
                        log.info("heartbeat: Redis answers again")
                        quiet = False
                    for raw in dead:
                        self._claimed(raw.decode() if isinstance(raw, bytes) else str(raw))
                except (RedisError, OSError, TimeoutError) as exc:
                    if not quiet:
                        log.warning("heartbeat: Redis does not answer (%s)", type(exc).__name__)
                        quiet = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._interval)
            if self._leave:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(2):
                        await client.zrem(self._key, self.name)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    def _claimed(self, worker: str) -> None:
        if worker == self.name or self._owner_loop is None:
            return
        log.warning("worker %s stopped beating: taking over its jobs", worker)
        with contextlib.suppress(RuntimeError):  # the worker's loop has closed
            asyncio.run_coroutine_threadsafe(self._on_dead(worker), self._owner_loop)
