"""Job control over real services: cancel (queued and running), change while queued, run
now, retry, idempotent submits, and the live text of a running job. Real Redis, the fake
model server, real HTTP and Socket.IO clients; the worker runs in this test's loop, except
where a test says it uses real `smartgen` processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import socketio

from smartgen.config import Settings
from smartgen.generation.prompts import system_message
from tests.conftest import ApiServer, all_stores, register, start_system, wait_for_status
from tests.fakellm import FakeLLM, Reply
from tests.test_worker import running_worker

WAIT = 20.0  # bound for any wait; never a speed assertion


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def queue(
    client: httpx.AsyncClient, headers: dict[str, str], prompt: str, **extra: Any
) -> dict[str, Any]:
    body = {"prompt": prompt, "contentType": "Blog Post Outline", **extra}
    r = await client.post("/generate-content", json=body, headers=headers)
    assert r.status_code == 202, r.text
    return dict(r.json())


async def until(check: Any, within: float = WAIT, every: float = 0.05) -> Any:
    """`check()` (awaited when it is a coroutine) until it gives something truthy, at most
    `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {value!r})")
        await asyncio.sleep(every)


class Events:
    """A Socket.IO client recording every event, with its `seq` when it has one."""

    NAMES = ("job_status", "job_progress", "job_completed", "job_failed")

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: list[tuple[str, dict[str, Any]]] = []
        for name in self.NAMES:
            self.sio.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Any:
        async def record(data: dict[str, Any]) -> None:
            self.received.append((name, data))

        return record

    async def connect(self, url: str, token: str, **auth: Any) -> None:
        await self.sio.connect(
            url, auth={"token": token, **auth}, transports=["websocket"], wait_timeout=WAIT
        )

    def of(self, name: str, job_id: str) -> list[dict[str, Any]]:
        return [d for n, d in self.received if n == name and d.get("jobId") == job_id]

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        await self.sio.shutdown()


@pytest.fixture
async def events() -> AsyncIterator[Events]:
    listener = Events()
    yield listener
    await listener.close()


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "REGISTER_IP_RATE_LIMIT": "0", "GENERATION_DELAY_SECONDS": "2"}


# --- cancel ---------------------------------------------------------------------------------
@all_stores
async def test_cancel_a_queued_job(
    api: ApiServer,
    client: httpx.AsyncClient,
    settings: Settings,
    fake_llm: FakeLLM,
    unique: str,
    events: Events,
) -> None:
    alice, bob = await register(client), await register(client)
    await events.connect(api.url, alice["token"])
    marker = f"[cancel-q-{unique}]"
    queued = await queue(client, alice["headers"], f"x {marker}")
    job_id = queued["jobId"]
    assert await api.services.queue.state(job_id) == "delayed"
    # Another user cannot see it, let alone cancel it.
    r = await client.delete(f"/generate-content/{job_id}", headers=bob["headers"])
    assert r.status_code == 404 and r.json()["error"] == "job_not_found"
    r = await client.delete("/generate-content/not-a-job", headers=alice["headers"])
    assert r.status_code == 404
    r = await client.delete(f"/generate-content/{job_id}", headers=alice["headers"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelled" and body["jobId"] == job_id
    assert ts(body["cancelledAt"]) <= datetime.now(UTC)
    assert "generatedContent" not in body
    # Its delayed queue entry is gone; nothing runs it after its delay.
    assert await api.services.queue.state(job_id) == "unknown"
    async with running_worker(settings):
        await asyncio.sleep(3)  # past its old due time (2 s): a worker would have taken it
    assert fake_llm.calls_for(marker) == []
    assert (await client.get(f"/generate-content/{job_id}", headers=alice["headers"])).json()[
        "status"
    ] == "cancelled"
    # A final job cannot be cancelled again.
    r = await client.delete(f"/generate-content/{job_id}", headers=alice["headers"])
    assert r.status_code == 409 and r.json()["error"] == "job_final"
    await until(lambda: events.of("job_status", job_id)[1:])
    assert [e["status"] for e in events.of("job_status", job_id)] == ["queued", "cancelled"]


async def test_cancel_a_running_job_stops_its_model_call_in_real_processes(
    env: dict[str, str], fake_llm: FakeLLM, unique: str, processes: list[Any]
) -> None:
    """Real `smartgen api` and `smartgen worker` processes: the API process learns of the
    cancel, the worker process holding the job stops its model call within about a second
    (the model server sees the connection close), nothing partial is kept, no retry."""
    marker = f"[cancel-run-{unique}]"
    fake_llm.script(marker, [Reply(content=" ".join(["word"] * 400), chunk_delay=0.05)])
    _, _, url = await start_system({**env, "GENERATION_DELAY_SECONDS": "0"}, processes)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"long {marker}")
        job_id = queued["jobId"]

        async def streaming() -> Any:
            r = await client.get(f"/generate-content/{job_id}", headers=user["headers"])
            body = r.json()
            return body if body["status"] == "processing" and body.get("partialContent") else None

        running = await until(streaming)
        assert running["partialContent"].startswith("word")
        [call] = fake_llm.calls_for(marker)
        assert call.aborted_at is None
        r = await client.delete(f"/generate-content/{job_id}", headers=user["headers"])
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        asked = time.time()
        await until(lambda: call.aborted_at, within=5)
        assert call.aborted_at is not None and call.aborted_at - asked < 2.0
        await asyncio.sleep(1.0)  # a retry, if one followed, would call the model again
        final = (await client.get(f"/generate-content/{job_id}", headers=user["headers"])).json()
        assert final["status"] == "cancelled"
        assert "generatedContent" not in final and "partialContent" not in final
        assert len(fake_llm.calls_for(marker)) == 1


@all_stores
async def test_a_completed_job_cannot_be_cancelled_and_a_race_has_one_outcome(
    api: ApiServer, client: httpx.AsyncClient, settings: Settings, unique: str
) -> None:
    user = await register(client)
    s = settings.model_copy(update={"generation_delay_seconds": 0})
    async with running_worker(s):
        done = await queue(client, user["headers"], f"done [{unique}]", delaySeconds=0)
        await wait_for_status(client, done["jobId"], user["headers"], {"completed"})
        r = await client.delete(f"/generate-content/{done['jobId']}", headers=user["headers"])
        assert r.status_code == 409 and r.json()["error"] == "job_final"
        # Cancels racing the worker: each job ends in exactly one final state, and a
        # cancelled job never shows content.
        jobs = [
            await queue(client, user["headers"], f"race {i} [{unique}]", delaySeconds=0)
            for i in range(8)
        ]
        answers = await asyncio.gather(
            *(
                client.delete(f"/generate-content/{j['jobId']}", headers=user["headers"])
                for j in jobs
            )
        )
        for job, answer in zip(jobs, answers, strict=True):
            final = await wait_for_status(
                client, job["jobId"], user["headers"], {"completed", "cancelled"}
            )
            if answer.status_code == 200:
                assert final["status"] == "cancelled" and "generatedContent" not in final
            else:
                assert answer.status_code == 409 and answer.json()["error"] == "job_final"
                assert final["status"] == "completed" and final["generatedContent"]


# --- change while queued, run now ----------------------------------------------------------
async def test_patch_a_queued_job_changes_store_and_queue_together(
    api: ApiServer,
    client: httpx.AsyncClient,
    settings: Settings,
    fake_llm: FakeLLM,
    unique: str,
) -> None:
    alice, bob = await register(client), await register(client)
    marker = f"[patch-{unique}]"
    queued = await queue(client, alice["headers"], f"first {marker}")
    job_id = queued["jobId"]
    path = f"/generate-content/{job_id}"
    r = await client.patch(path, json={"prompt": "x"}, headers=bob["headers"])
    assert r.status_code == 404
    # Bad changes: nothing to change, both times, the past, too far, unknown fields.
    for bad, field in [
        ({}, "body"),
        ({"delaySeconds": 5, "scheduledFor": "2030-01-01T00:00:00Z"}, "scheduledFor"),
        ({"scheduledFor": "2001-01-01T00:00:00Z"}, "scheduledFor"),
        ({"delaySeconds": settings.max_delay_seconds + 1}, "delaySeconds"),
        ({"delaySeconds": -1}, "delaySeconds"),
        ({"prompt": ""}, "prompt"),
        ({"contentType": "Poem"}, "contentType"),
        ({"status": "completed"}, "status"),
    ]:
        r = await client.patch(path, json=bad, headers=alice["headers"])
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"] == "validation_error"
        assert field in {d["field"] for d in r.json()["details"]}, (bad, r.json())
    # Later, with a new prompt and content type: the store and the queue agree.
    r = await client.patch(
        path,
        json={
            "delaySeconds": 4,
            "prompt": f"second {marker}",
            "contentType": "Social Media Caption",
        },
        headers=alice["headers"],
    )
    assert r.status_code == 200, r.text
    changed = r.json()
    assert changed["prompt"] == f"second {marker}"
    assert changed["contentType"] == "Social Media Caption"
    due = ts(changed["scheduledFor"])
    assert due > ts(queued["scheduledFor"])
    assert await api.services.queue.state(job_id) == "delayed"
    async with running_worker(settings):
        final = await wait_for_status(client, job_id, alice["headers"], {"completed"}, 30)
    assert ts(final["startedAt"]) >= due  # never before its new time
    [call] = fake_llm.calls_for(marker)
    assert call.prompt == f"second {marker}"
    assert call.system == system_message("Social Media Caption")
    r = await client.patch(path, json={"delaySeconds": 1}, headers=alice["headers"])
    assert r.status_code == 409 and r.json()["error"] == "job_not_queued"


async def test_reschedule_later_while_a_delivery_is_due_waits_for_the_new_time(
    client: httpx.AsyncClient, api: ApiServer, settings: Settings, unique: str
) -> None:
    """A job moved later with `scheduledFor` never starts before it, even when a worker
    is running the whole time."""
    user = await register(client)
    s = settings.model_copy(update={"generation_delay_seconds": 1})
    async with running_worker(s):
        queued = await queue(client, user["headers"], f"later [{unique}]")
        later = datetime.now(UTC) + timedelta(seconds=4)
        r = await client.patch(
            f"/generate-content/{queued['jobId']}",
            json={"scheduledFor": later.isoformat()},
            headers=user["headers"],
        )
        assert r.status_code == 200, r.text
        final = await wait_for_status(client, queued["jobId"], user["headers"], {"completed"}, 30)
    assert ts(final["startedAt"]) >= ts(r.json()["scheduledFor"])


async def test_run_now_starts_a_queued_job_at_once(
    api: ApiServer, client: httpx.AsyncClient, settings: Settings, unique: str
) -> None:
    alice, bob = await register(client), await register(client)
    async with running_worker(settings):
        queued = await queue(client, alice["headers"], f"now [{unique}]", delaySeconds=3600)
        path = f"/generate-content/{queued['jobId']}/run-now"
        assert (await client.post(path, headers=bob["headers"])).status_code == 404
        r = await client.post(path, headers=alice["headers"])
        assert r.status_code == 200, r.text
        assert ts(r.json()["scheduledFor"]) < ts(queued["scheduledFor"])
        final = await wait_for_status(client, queued["jobId"], alice["headers"], {"completed"})
        assert final["status"] == "completed"
    r = await client.post(path, headers=alice["headers"])
    assert r.status_code == 409 and r.json()["error"] == "job_not_queued"


# --- retry ----------------------------------------------------------------------------------
@all_stores
async def test_retry_a_failed_job_keeps_its_history(
    api: ApiServer, client: httpx.AsyncClient, settings: Settings, fake_llm: FakeLLM, unique: str
) -> None:
    alice, bob = await register(client), await register(client)
    marker = f"[retry-{unique}]"
    fake_llm.script(marker, [Reply(status=400)])  # refused once, then the default answer
    s = settings.model_copy(update={"generation_delay_seconds": 0})
    async with running_worker(s):
        queued = await queue(client, alice["headers"], f"x {marker}", delaySeconds=0)
        job_id = queued["jobId"]
        failed = await wait_for_status(client, job_id, alice["headers"], {"failed"})
        path = f"/generate-content/{job_id}/retry"
        assert (await client.post(path, headers=bob["headers"])).status_code == 404
        r = await client.post(path, headers=alice["headers"])
        assert r.status_code == 202, r.text
        again = r.json()
        assert again["jobId"] == job_id and again["status"] == "queued"
        assert set(again) == set(queued)  # the same fields as POST /generate-content
        done = await wait_for_status(client, job_id, alice["headers"], {"completed"})
    assert done["generatedContent"]
    assert done["history"] == [
        {
            "status": "failed",
            "attempts": failed["attempts"],
            "scheduledFor": failed["scheduledFor"],
            "startedAt": failed["startedAt"],
            "error": failed["error"],
            "failedAt": failed["failedAt"],
        }
    ]
    assert len(fake_llm.calls_for(marker)) == 2
    r = await client.post(path, headers=alice["headers"])
    assert r.status_code == 409 and r.json()["error"] == "job_not_retryable"


@all_stores
async def test_retry_a_cancelled_job(
    api: ApiServer, client: httpx.AsyncClient, settings: Settings, unique: str
) -> None:
    user = await register(client)
    queued = await queue(client, user["headers"], f"back [{unique}]", delaySeconds=3600)
    job_id = queued["jobId"]
    r = await client.delete(f"/generate-content/{job_id}", headers=user["headers"])
    assert r.status_code == 200
    r = await client.post(f"/generate-content/{job_id}/retry", headers=user["headers"])
    assert r.status_code == 202, r.text
    assert await api.services.queue.state(job_id) in {"delayed", "waiting"}
    s = settings.model_copy(update={"generation_delay_seconds": 0})
    await client.post(f"/generate-content/{job_id}/run-now", headers=user["headers"])
    async with running_worker(s):
        done = await wait_for_status(client, job_id, user["headers"], {"completed"})
    assert [h["status"] for h in done["history"]] == ["cancelled"]


# --- idempotent submits ---------------------------------------------------------------------
async def test_idempotency_key_replays_the_first_answer(
    api: ApiServer, client: httpx.AsyncClient, unique: str
) -> None:
    alice, bob = await register(client), await register(client)
    key = f"order-{unique}"
    body = {"prompt": f"idem [{unique}]", "contentType": "Blog Post Outline"}
    first = await client.post(
        "/generate-content", json=body, headers={**alice["headers"], "Idempotency-Key": key}
    )
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    again = await client.post(
        "/generate-content", json=body, headers={**alice["headers"], "Idempotency-Key": key}
    )
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    listed = (await client.get("/generate-content", headers=alice["headers"])).json()
    assert [j["jobId"] for j in listed] == [first.json()["jobId"]]
    # The same key with another body is a mistake; another user's key is theirs alone.
    other = await client.post(
        "/generate-content",
        json={**body, "prompt": "something else"},
        headers={**alice["headers"], "Idempotency-Key": key},
    )
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    bobs = await client.post(
        "/generate-content", json=body, headers={**bob["headers"], "Idempotency-Key": key}
    )
    assert bobs.status_code == 202 and bobs.json()["jobId"] != first.json()["jobId"]
    too_long = await client.post(
        "/generate-content", json=body, headers={**alice["headers"], "Idempotency-Key": "k" * 256}
    )
    assert too_long.status_code == 422
    assert "Idempotency-Key" in {d["field"] for d in too_long.json()["details"]}


async def test_concurrent_submits_with_one_key_make_one_job(
    api: ApiServer, client: httpx.AsyncClient, unique: str
) -> None:
    user = await register(client)
    headers = {**user["headers"], "Idempotency-Key": f"burst-{unique}"}
    body = {"prompt": f"burst [{unique}]", "contentType": "Blog Post Outline"}
    answers = await asyncio.gather(
        *(client.post("/generate-content", json=body, headers=headers) for _ in range(12))
    )
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {202, 409}, [a.text for a in answers]
    created = {a.json()["jobId"] for a in answers if a.status_code == 202}
    assert len(created) == 1
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["error"] == "idempotency_key_in_use"
    listed = (await client.get("/generate-content", headers=user["headers"])).json()
    assert [j["jobId"] for j in listed] == list(created)


async def test_a_failed_submit_keeps_no_idempotent_answer(
    api: ApiServer, client: httpx.AsyncClient, settings: Settings, unique: str
) -> None:
    user = await register(client)
    headers = {**user["headers"], "Idempotency-Key": f"retry-me-{unique}"}
    too_long = {"prompt": "x" * (settings.prompt_max_chars + 1), "contentType": "Blog Post Outline"}
    r = await client.post("/generate-content", json=too_long, headers=headers)
    assert r.status_code == 422
    # The same key is free for the corrected request.
    good = {"prompt": f"fixed [{unique}]", "contentType": "Blog Post Outline"}
    r = await client.post("/generate-content", json=good, headers=headers)
    assert r.status_code == 202, r.text


# --- live text --------------------------------------------------------------------------------
async def test_job_progress_events_carry_the_text_as_it_is_written(
    api: ApiServer,
    client: httpx.AsyncClient,
    settings: Settings,
    fake_llm: FakeLLM,
    unique: str,
    events: Events,
) -> None:
    user = await register(client)
    await events.connect(api.url, user["token"])
    marker = f"[live-{unique}]"
    text = " ".join(f"w{i}" for i in range(60))
    fake_llm.script(marker, [Reply(content=f"{text} {marker}", chunk_delay=0.02)])
    s = settings.model_copy(update={"generation_delay_seconds": 0})
    async with running_worker(s):
        queued = await queue(client, user["headers"], f"x {marker}", delaySeconds=0)
        done = await wait_for_status(client, queued["jobId"], user["headers"], {"completed"})
        await until(lambda: events.of("job_completed", queued["jobId"]))
    progress = events.of("job_progress", queued["jobId"])
    assert len(progress) >= 3  # written in pieces, not in one event at the end
    assert len(progress) <= 60  # coalesced: fewer events than chunks (~10 per second)
    assert "".join(p["delta"] for p in progress).strip() == done["generatedContent"]
    assert [p["length"] for p in progress] == sorted(p["length"] for p in progress)
    seqs = [p["seq"] for p in progress]
    assert seqs == sorted(set(seqs))
    # The seed's event comes last, unchanged.
    names = [n for n, d in events.received if d.get("jobId") == queued["jobId"]]
    assert names[-1] == "job_completed"


async def test_an_answer_whole_within_one_interval_is_announced_by_its_final_state_alone(
    api: ApiServer,
    client: httpx.AsyncClient,
    settings: Settings,
    fake_llm: FakeLLM,
    unique: str,
    events: Events,
) -> None:
    user = await register(client)
    await events.connect(api.url, user["token"])
    marker = f"[fast-{unique}]"
    fake_llm.script(marker, [Reply(content=f"quick {marker}")])  # streamed, no delay
    s = settings.model_copy(
        update={"generation_delay_seconds": 0, "progress_interval_seconds": 5.0}
    )
    async with running_worker(s):
        queued = await queue(client, user["headers"], f"x {marker}", delaySeconds=0)
        done = await wait_for_status(client, queued["jobId"], user["headers"], {"completed"})
        await until(lambda: events.of("job_completed", queued["jobId"]))
    assert done["generatedContent"] == f"quick {marker}"
    assert events.of("job_progress", queued["jobId"]) == []
    assert (
        events.of("job_completed", queued["jobId"])[0]["generatedContent"]
        == done["generatedContent"]
    )


async def test_a_stream_that_breaks_is_retried_from_scratch(
    api: ApiServer,
    client: httpx.AsyncClient,
    settings: Settings,
    fake_llm: FakeLLM,
    unique: str,
    events: Events,
) -> None:
    user = await register(client)
    await events.connect(api.url, user["token"])
    marker = f"[break-{unique}]"
    words = " ".join(f"b{i}" for i in range(40))
    text = f"{words} {marker}"
    fake_llm.script(
        marker,
        [
            Reply(content=text, chunk_delay=0.01, break_after=15),
            Reply(content=text, chunk_delay=0.01),  # slower than one progress interval
        ],
    )
    s = settings.model_copy(update={"generation_delay_seconds": 0, "job_backoff_ms": 100})
    async with running_worker(s):
        queued = await queue(client, user["headers"], f"x {marker}", delaySeconds=0)
        done = await wait_for_status(client, queued["jobId"], user["headers"], {"completed"})
        await until(lambda: events.of("job_completed", queued["jobId"]))
    assert done["attempts"] == 2
    assert len(fake_llm.calls_for(marker)) == 2
    progress = events.of("job_progress", queued["jobId"])
    # The broken stream took its text back once (an empty reset); each run's first piece
    # starts the text (a reset carrying it). What a client shows, piece by piece:
    breaks = [i for i, p in enumerate(progress) if p.get("reset") and p["delta"] == ""]
    assert len(breaks) == 1
    starts = [i for i, p in enumerate(progress) if p.get("reset") and p["delta"]]
    assert starts[0] == 0 and starts[-1] == breaks[0] + 1
    shown = ""
    for piece in progress:
        shown = piece["delta"] if piece.get("reset") else shown + piece["delta"]
    assert shown.strip() == done["generatedContent"]
    after_reset = progress[breaks[0] + 1 :]
    assert "".join(p["delta"] for p in after_reset).strip() == done["generatedContent"]
    assert done["generatedContent"] == text


async def test_offline_drafts_stream_too(
    env: dict[str, str], unique: str, processes: list[Any]
) -> None:
    """The embedded default (no key: offline drafts) shows live text as well."""
    offline = {**env, "LLM_PROVIDER": "offline", "GENERATION_DELAY_SECONDS": "0"}
    _, _, url = await start_system(offline, processes)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        listener = Events()
        try:
            await listener.connect(url, user["token"])
            queued = await queue(client, user["headers"], f"Sourdough [{unique}]")
            done = await wait_for_status(client, queued["jobId"], user["headers"], {"completed"})
            await until(lambda: listener.of("job_completed", queued["jobId"]))
            progress = listener.of("job_progress", queued["jobId"])
        finally:
            await listener.close()
    assert done["model"] == "offline/smartgen-draft"
    assert len(progress) >= 2
    assert "".join(p["delta"] for p in progress).strip() == done["generatedContent"]


# --- the estimate learns ----------------------------------------------------------------------
async def test_estimated_completion_learns_from_recent_jobs(
    client: httpx.AsyncClient, settings: Settings, unique: str
) -> None:
    s = settings.model_copy(
        update={"expected_processing_seconds": 900.0, "generation_delay_seconds": 0}
    )
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as c:
        user = await register(c)
        api.services.timings._cache_seconds = 0.0  # read the history on every request
        first = await queue(c, user["headers"], f"a [{unique}]", contentType="Product Description")
        # No history yet: the setting.
        assert ts(first["estimatedCompletionTime"]) - ts(first["scheduledFor"]) == timedelta(
            seconds=900
        )
        async with running_worker(s):
            await wait_for_status(c, first["jobId"], user["headers"], {"completed"})
        second = await queue(c, user["headers"], f"b [{unique}]", contentType="Product Description")
        took = ts(second["estimatedCompletionTime"]) - ts(second["scheduledFor"])
        assert timedelta(0) <= took < timedelta(seconds=30)  # what the first one took
        # Another content type has no history of its own.
        other = await queue(c, user["headers"], f"c [{unique}]", contentType="Social Media Caption")
        assert ts(other["estimatedCompletionTime"]) - ts(other["scheduledFor"]) == timedelta(
            seconds=900
        )
