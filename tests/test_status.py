"""`smartgen status` as an operator runs it (a real process) against real Redis, store and
worker: counts, the oldest waiting job, connected workers and their concurrency, stuck
jobs, Redis or the store down, and the exit code."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import uuid
from datetime import timedelta
from typing import Any

import httpx

from smartgen.config import Settings
from smartgen.kit.times import utcnow
from smartgen.models import Job, JobStatus
from smartgen.store import open_store
from tests.conftest import Process, free_port, register, start_system, wait_http


def status(env: dict[str, str], *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "smartgen", "status", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.gettempdir(),
    )
    return done.returncode, done.stdout


async def status_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out = await asyncio.to_thread(status, env, "--json", *args)
    return code, json.loads(out)


async def wait_for_worker(env: dict[str, str]) -> dict[str, Any]:
    for _ in range(100):
        _, report = await status_json(env)
        if report["workers"]:
            return report
        await asyncio.sleep(0.2)
    raise AssertionError("the worker never showed up")


async def test_status_reports_queue_workers_and_stuck_jobs(
    env: dict[str, str], settings: Settings, processes: list[Process]
) -> None:
    env = {**env, "GENERATION_DELAY_SECONDS": "0"}
    port = free_port()
    api = Process("api", env, PORT=str(port))
    processes.append(api)
    url = f"http://127.0.0.1:{port}"
    await wait_http(url, api)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        r = await client.post(
            "/generate-content",
            json={"prompt": "wait for me", "contentType": "Blog Post Outline"},
            headers=user["headers"],
        )
        assert r.status_code == 202
    await asyncio.sleep(1.2)
    # No worker: the job waits, and that needs attention.
    code, report = await status_json(env, "--max-wait", "1")
    assert code == 1
    assert report["redis"]["status"] == "ok" and report["store"]["status"] == "ok"
    assert report["queue"]["counts"]["waiting"] == 1
    assert report["queue"]["oldestWaitingSeconds"] >= 1
    assert report["workers"] == []
    assert "no worker is connected to the queue" in report["attention"]
    assert any("oldest waiting job" in item for item in report["attention"])

    # A worker (its concurrency shown) takes the job: all good, exit 0.
    worker = Process("worker", env, WORKER_CONCURRENCY="7")
    processes.append(worker)
    report = await wait_for_worker(env)
    for _ in range(100):
        code, report = await status_json(env)
        if code == 0:
            break
        await asyncio.sleep(0.2)
    assert code == 0, report
    assert report["attention"] == [] and report["ok"] is True
    (seen,) = report["workers"]
    assert seen["concurrency"] == 7
    assert str(worker.proc.pid) in seen["name"]
    assert report["queue"]["counts"]["completed"] == 1
    assert report["queue"]["oldestWaitingSeconds"] is None

    # A job stuck in processing past its lease (its worker died): listed, exit 1. Its
    # scheduled time is ahead, so the worker's reconciler leaves it alone meanwhile.
    store = open_store(settings)
    now = utcnow()
    stuck = Job(
        job_id=str(uuid.uuid4()),
        user_id=user["userId"],
        status=JobStatus.queued,
        prompt="stuck",
        content_type="Blog Post Outline",
        scheduled_for=now + timedelta(hours=1),
        created_at=now,
        updated_at=now,
    )
    try:
        await store.jobs.create(stuck)
        await store.jobs.mark_processing(
            stuck.job_id,
            at=now - timedelta(minutes=2),
            attempt=1,
            lease_until=now - timedelta(minutes=1),
            owner="gone",
        )
    finally:
        await store.close()
    code, report = await status_json(env)
    assert code == 1
    assert [s["jobId"] for s in report["stuck"]] == [stuck.job_id]
    assert report["stuck"][0]["pastLeaseSeconds"] >= 60
    assert report["attention"] == ["1 jobs stuck in processing past their lease"]
    # The same, for people.
    code, text = await asyncio.to_thread(status, env)
    assert code == 1
    assert "concurrency 7" in text and stuck.job_id in text and "attention:" in text


async def test_status_when_redis_and_the_store_are_down(env: dict[str, str]) -> None:
    down = {
        **env,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/x",
        "QUEUE_TIMEOUT_SECONDS": "1",
    }
    code, report = await status_json(down)
    assert code == 1
    assert report["redis"]["status"] == "unavailable"
    assert report["store"]["status"] == "unavailable"
    assert report["queue"] is None and report["workers"] == []
    assert len(report["attention"]) == 2
    code, text = await asyncio.to_thread(status, down)
    assert code == 1 and "Redis does not answer" in text


async def test_status_when_all_is_well(env: dict[str, str], processes: list[Process]) -> None:
    await start_system(env, processes)
    report = await wait_for_worker(env)
    code, report = await status_json(env)
    assert code == 0, report
    assert report["stuck"] == [] and report["queue"]["counts"]["waiting"] == 0
