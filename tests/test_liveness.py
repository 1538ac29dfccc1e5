"""Crash recovery within seconds (queue/liveness.py): a worker that dies is claimed by a
live one, which queues its jobs again at once; a worker that is slow but alive keeps its
jobs. Real Redis, real `smartgen` processes, the fake model server."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import redis.asyncio as aioredis

from smartgen.config import Settings
from smartgen.queue.liveness import Heartbeat, workers_key
from tests.conftest import Process, register, start_system, wait_for_status
from tests.fakellm import FakeLLM, Reply
from tests.test_worker import queue


async def _wait(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_silent_worker_is_claimed_by_exactly_one_live_worker(
    settings: Settings, redis_server
) -> None:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(
        update={"worker_heartbeat_seconds": 0.2, "worker_dead_after_seconds": 1.0}
    )
    key = workers_key(settings)
    r = aioredis.from_url(redis_server.url)
    claims: list[tuple[str, str]] = []

    def claimer(name: str):  # type: ignore[no-untyped-def]
        async def on_dead(worker: str) -> None:
            claims.append((name, worker))

        return on_dead

    # A worker that beat long ago (Redis's clock is seconds since 1970).
    await r.zadd(key, {"ghost": 1.0})
    beats = [Heartbeat(settings, f"live-{i}", claimer(f"live-{i}")) for i in range(3)]
    try:
        for beat in beats:
            beat.start()
        await _wait(lambda: len(claims) >= 1, 10, "the ghost to be claimed")
        await _wait(lambda: all(b.beats >= 8 for b in beats), 20, "more beats")
        # Exactly one claim, of the ghost only: live workers never claim each other.
        assert [worker for _, worker in claims] == ["ghost"]
        members = {m.decode() for m in await r.zrange(key, 0, -1)}
        assert members == {"live-0", "live-1", "live-2"}
    finally:
        await beats[0].stop(leave=True)  # a graceful stop leaves the set
        await beats[1].stop(leave=False)  # a stop with jobs left running does not
        assert {m.decode() for m in await r.zrange(key, 0, -1)} == {"live-1", "live-2"}
        await _wait(lambda: ("live-2", "live-1") in claims, 10, "live-1 claimed once silent")
        await beats[2].stop(leave=True)
        await r.delete(key)
        await r.aclose()


async def test_a_busy_event_loop_keeps_beating(settings: Settings, redis_server) -> None:  # type: ignore[no-untyped-def]
    """The beat has its own thread and loop: a worker whose event loop is stuck in a
    long CPU-bound step still beats, so no other worker takes its jobs."""
    settings = settings.model_copy(
        update={"worker_heartbeat_seconds": 0.2, "worker_dead_after_seconds": 1.0}
    )
    claims: list[str] = []

    async def on_dead(worker: str) -> None:
        claims.append(worker)

    busy = Heartbeat(settings, "busy", on_dead)
    watcher = Heartbeat(settings, "watcher", on_dead)
    busy.start()
    watcher.start()
    try:
        await _wait(lambda: busy.beats >= 2, 10, "first beats")
        before = busy.beats
        time.sleep(3.0)  # noqa: ASYNC251 - the point: this loop is blocked for 3 dead-afters
        assert busy.beats >= before + 5
        await asyncio.sleep(1.0)  # claims made meanwhile reach this loop now
        assert claims == []
    finally:
        await busy.stop(leave=True)
        await watcher.stop(leave=True)


async def test_killed_worker_job_completes_within_seconds(
    env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    """Default lock and stalled check (30 s each): recovery comes from the heartbeat, not
    from bullmq's lock running out, so the job finishes well before 30 s."""
    env = {**env, "GENERATION_DELAY_SECONDS": "0"}
    _, first, url = await start_system(env, processes)
    marker = f"[liveness-kill-{unique}]"
    fake_llm.script(marker, [Reply(delay=4.0)])
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x {marker}")
        await _wait(lambda: len(fake_llm.calls_for(marker)) >= 1, 20, "the model call")
        first.kill()  # SIGKILL while the model call is in flight
        killed_at = time.monotonic()
        second = Process("worker", env)  # the same worker, restarted
        processes.append(second)
        job = await wait_for_status(
            client, queued["jobId"], user["headers"], {"completed", "failed"}, 20
        )
        recovered_in = time.monotonic() - killed_at
    assert job["status"] == "completed", job
    # The call that died with the worker, and the one that finished: no other.
    assert len(fake_llm.calls_for(marker)) == 2
    assert "died running 1 job(s)" in second.output(), second.output()
    assert recovered_in < 25, recovered_in  # bullmq's own path takes 30 s or more


async def test_a_frozen_but_live_worker_is_not_robbed_when_its_lock_lapses(
    env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    """A worker frozen longer than its bullmq lock (but shorter than the heartbeat's
    dead-after) has its message redelivered to another worker by bullmq's stalled check;
    the lease is the frozen worker's, so the other delivery backs off and the job is
    generated once."""
    env = {
        **env,
        "GENERATION_DELAY_SECONDS": "0",
        "LOCK_DURATION_MS": "1000",
        "STALLED_INTERVAL_MS": "1000",
        "WORKER_DEAD_AFTER_SECONDS": "15",
        "LLM_TIMEOUT_SECONDS": "60",  # the freeze must not time the model call out
        "LOG_LEVEL": "info",
    }
    _, first, url = await start_system(env, processes)
    marker = f"[liveness-frozen-{unique}]"
    fake_llm.script(marker, [Reply(delay=2.0)])
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"x {marker}")
        await _wait(lambda: len(fake_llm.calls_for(marker)) >= 1, 20, "the model call")
        other = Process("worker", env)
        processes.append(other)
        first.proc.send_signal(signal.SIGSTOP)
        try:
            # Frozen until the other worker has been handed the job's message and refused
            # it (bullmq's stalled check after the 1 s lock lapsed).
            await _wait(
                lambda: "another delivery of this job is running" in other.output(),
                30,
                "the other worker to be handed the stalled message",
            )
        finally:
            first.proc.send_signal(signal.SIGCONT)
        job = await wait_for_status(
            client, queued["jobId"], user["headers"], {"completed", "failed"}, 40
        )
    assert job["status"] == "completed", job
    assert len(fake_llm.calls_for(marker)) == 1
