"""A job's whole life over real `smartgen api` and `smartgen worker` processes, on each
store (SQLite, PostgreSQL, the MongoDB wire server): the list's `status` filter with a job
in every status, and the final events a real worker announces over Socket.IO."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Process, all_stores, register, start_system, wait_for_status
from tests.fakellm import FakeLLM, Reply
from tests.test_realtime import Listener

STATUSES = ("queued", "processing", "completed", "failed", "cancelled")


async def submit(
    client: httpx.AsyncClient, headers: dict[str, str], prompt: str, **extra: Any
) -> str:
    r = await client.post(
        "/generate-content",
        json={"prompt": prompt, "contentType": "Blog Post Outline", **extra},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    return str(r.json()["jobId"])


@all_stores
async def test_status_filter_returns_the_jobs_in_each_status(
    env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    system = {**env, "GENERATION_DELAY_SECONDS": "0", "REGISTER_IP_RATE_LIMIT": "0"}
    _, _, url = await start_system(system, processes)
    slow, broken = f"[slow-{unique}]", f"[402-{unique}]"
    # A stream that lasts about a minute, each chunk well within LLM_TIMEOUT_SECONDS.
    fake_llm.script(slow, [Reply(content="word " * 60, chunk_delay=1.0)])
    fake_llm.always(broken, Reply(status=402, json_body={"error": {"message": "No credits"}}))
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        alice, bob = await register(client), await register(client)
        headers = alice["headers"]
        ids = {
            "queued": await submit(client, headers, f"later {unique}", delaySeconds=600),
            "cancelled": await submit(client, headers, f"never {unique}", delaySeconds=600),
            "completed": await submit(client, headers, f"done {unique}"),
            "failed": await submit(client, headers, f"x {broken}"),
            "processing": await submit(client, headers, f"y {slow}"),
        }
        r = await client.delete(f"/generate-content/{ids['cancelled']}", headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        for status in ("completed", "failed", "processing"):
            await wait_for_status(client, ids[status], headers, {status}, 30)
        bobs = await submit(client, bob["headers"], f"bob's {unique}", delaySeconds=600)

        everything = (await client.get("/generate-content", headers=headers)).json()
        assert {job["jobId"]: job["status"] for job in everything} == {
            job_id: status for status, job_id in ids.items()
        }
        for status in STATUSES:
            r = await client.get("/generate-content", params={"status": status}, headers=headers)
            assert r.status_code == 200, r.text
            listed = r.json()
            assert [job["jobId"] for job in listed] == [ids[status]], (status, listed)
            assert listed[0]["status"] == status
            r = await client.get(
                "/generate-content", params={"status": status}, headers=bob["headers"]
            )
            assert [job["jobId"] for job in r.json()] == ([bobs] if status == "queued" else [])
        r = await client.get("/generate-content", params={"status": "lost"}, headers=headers)
        assert r.status_code == 422 and r.json()["error"] == "validation_error", r.text

        # The processing job is cancelled too: the filter follows the change.
        r = await client.delete(f"/generate-content/{ids['processing']}", headers=headers)
        assert r.status_code == 200, r.text
        r = await client.get("/generate-content", params={"status": "cancelled"}, headers=headers)
        assert {job["jobId"] for job in r.json()} == {ids["cancelled"], ids["processing"]}
        r = await client.get("/generate-content", params={"status": "processing"}, headers=headers)
        assert r.json() == []


@pytest.mark.parametrize(
    ("reply", "attempts"),
    [
        (Reply(status=401, json_body={"error": {"message": "Invalid key"}}), 1),
        (Reply(status=503), 2),
    ],
    ids=["non-retryable", "retries-exhausted"],
)
async def test_real_worker_announces_job_failed_over_socketio(
    env: dict[str, str],
    processes: list[Process],
    fake_llm: FakeLLM,
    unique: str,
    reply: Reply,
    attempts: int,
) -> None:
    system = {**env, "GENERATION_DELAY_SECONDS": "0", "JOB_ATTEMPTS": "2"}
    _, _, url = await start_system(system, processes)
    marker = f"[fails-{unique}]"
    fake_llm.always(marker, reply)
    listener = Listener()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        try:
            await listener.connect(url, auth={"token": user["token"]})
            job_id = await submit(client, user["headers"], f"x {marker}")
            [event] = await listener.wait_for("job_failed", job_id)
            job = await wait_for_status(client, job_id, user["headers"], {"failed"})
        finally:
            await listener.close()
    assert event == {
        "userId": user["userId"],
        "jobId": job_id,
        "status": "failed",
        "error": job["error"],
        "failedAt": job["failedAt"],
    }
    assert job["attempts"] == attempts
    # failedAt and error only when failed; nothing of a completion.
    assert job["failedAt"] >= job["startedAt"]
    for absent in ("generatedContent", "completedAt", "model", "usage", "cancelledAt"):
        assert absent not in job
    assert len(fake_llm.calls_for(marker)) == attempts
    assert listener.events("job_completed", job_id) == []
    statuses = [e["status"] for e in listener.events("job_status", job_id)]
    assert statuses[-1] == "failed" and statuses.count("failed") == 1, statuses
