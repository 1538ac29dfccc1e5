"""The worker over real Redis, the MongoDB wire-protocol server and the fake LLM server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest

from smartgen.config import Settings
from smartgen.generation.prompts import system_message
from smartgen.queue.producer import JOB_NAME, GenerationQueue
from smartgen.redis_clients import redis_client
from smartgen.server.worker import run_worker
from tests.conftest import ApiServer, all_stores, register, wait_for_status
from tests.fakellm import FakeLLM, Reply
from tests.test_realtime import Listener


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(params=[True, False], ids=["fetch-next", "stock-worker"])
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """Every worker test on both paths: bullmq's Worker with fetch-next (the default,
    queue/fetch_next.py) and the stock one (WORKER_FETCH_NEXT=false)."""
    return settings.model_copy(update={"worker_fetch_next": request.param})


# A test of the store's behaviour runs on every store, on the default worker path only.
fetch_next_only = pytest.mark.parametrize("settings", [True], indirect=True, ids=["fetch-next"])


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop=stop))
    await asyncio.sleep(0.3)
    if task.done():
        task.result()
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[None]:
    async with running_worker(settings):
        yield


async def queue(
    client: httpx.AsyncClient, headers: dict[str, str], prompt: str, kind: str = "Blog Post Outline"
) -> dict:
    r = await client.post(
        "/generate-content", json={"prompt": prompt, "contentType": kind}, headers=headers
    )
    assert r.status_code == 202, r.text
    return r.json()


async def test_job_completes_after_its_delay(
    client: httpx.AsyncClient, worker: None, fake_llm: FakeLLM, unique: str
) -> None:
    user = await register(client)
    marker = f"[ok-{unique}]"
    queued = await queue(client, user["headers"], f"Sourdough {marker}", "Product Description")
    job = await wait_for_status(client, queued["jobId"], user["headers"], {"completed", "failed"})
    assert job["status"] == "completed", job
    assert job["generatedContent"].startswith(f"# Outline: Sourdough {marker}")
    assert job["model"] == "fake/model-1"
    assert job["usage"]["total_tokens"] == 46
    assert job["attempts"] == 1
    assert "error" not in job
    scheduled = ts(queued["scheduledFor"])
    # Never before its time: neither the state change nor the LLM call.
    assert ts(job["startedAt"]) >= scheduled
    [call] = fake_llm.calls_for(marker)
    assert call.at >= scheduled.timestamp()
    assert call.headers["authorization"] == "Bearer sk-or-test-key"
    assert call.body["model"] == "fake/model-1"
    assert call.system == system_message("Product Description")
    assert call.prompt == f"Sourdough {marker}"


async def test_delayed_job_starts_on_time_after_long_block(
    settings: Settings, worker: None, unique: str
) -> None:
    """redis-py 8's default 5 s socket timeout broke the worker's blocking wait for a job
    due in more than 5 s (it started ~15-50 s late); it must start within about a second."""
    later = settings.model_copy(update={"generation_delay_seconds": 8.0})
    async with ApiServer(later) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        user = await register(client)
        queued = await queue(client, user["headers"], f"late? [idle-{unique}]")
        assert queued["delaySeconds"] == 8
        job = await wait_for_status(
            client, queued["jobId"], user["headers"], {"completed"}, timeout=25
        )
    lateness = (ts(job["startedAt"]) - ts(queued["scheduledFor"])).total_seconds()
    # Never early; and not cut off by a socket timeout (5 s, redis-py's default), which is
    # what made it 15-50 s late. A bound at the bug's own scale, not a speed assertion.
    assert 0 <= lateness < 5.0, lateness


async def test_retryable_errors_then_failed(
    client: httpx.AsyncClient, worker: None, fake_llm: FakeLLM, unique: str
) -> None:
    user = await register(client)
    marker = f"[down-{unique}]"
    fake_llm.always(marker, Reply(status=500))
    queued = await queue(client, user["headers"], f"x {marker}")
    job = await wait_for_status(
        client, queued["jobId"], user["headers"], {"completed", "failed"}, timeout=30
    )
    assert job["status"] == "failed"
    assert job["attempts"] == 3
    assert (
        job["error"]
        == "Generation failed: the model provider answered HTTP 500: fake upstream error 500"
    )
    assert "sk-or-test-key" not in job["error"] and "Traceback" not in job["error"]
    assert "generatedContent" not in job
    assert len(fake_llm.calls_for(marker)) == 3


async def test_rate_limited_then_success_honours_retry_after(
    client: httpx.AsyncClient, worker: None, fake_llm: FakeLLM, unique: str
) -> None:
    user = await register(client)
    marker = f"[429-{unique}]"
    fake_llm.script(marker, [Reply(status=429, headers={"Retry-After": "2"})])
    queued = await queue(client, user["headers"], f"x {marker}")
    job = await wait_for_status(
        client, queued["jobId"], user["headers"], {"completed", "failed"}, timeout=30
    )
    assert job["status"] == "completed"
    assert job["attempts"] == 2
    first, second = fake_llm.calls_for(marker)
    assert second.at - first.at >= 1.9  # backoff is 200 ms here; Retry-After wins


async def test_non_retryable_error_fails_at_once(
    client: httpx.AsyncClient, worker: None, fake_llm: FakeLLM, unique: str
) -> None:
    user = await register(client)
    marker = f"[402-{unique}]"
    fake_llm.always(
        marker, Reply(status=402, json_body={"error": {"message": "Insufficient credits"}})
    )
    queued = await queue(client, user["headers"], f"x {marker}")
    job = await wait_for_status(client, queued["jobId"], user["headers"], {"completed", "failed"})
    assert job["status"] == "failed"
    assert "insufficient credits" in job["error"]
    assert len(fake_llm.calls_for(marker)) == 1


async def test_malformed_answers_retry_then_succeed(
    client: httpx.AsyncClient, worker: None, fake_llm: FakeLLM, unique: str
) -> None:
    user = await register(client)
    marker = f"[bad-{unique}]"
    fake_llm.script(
        marker,
        [
            Reply(raw_body=b"<html>gateway</html>"),
            Reply(json_body={"error": {"message": "upstream", "code": 502}}),
        ],
    )
    queued = await queue(client, user["headers"], f"x {marker}")
    job = await wait_for_status(
        client, queued["jobId"], user["headers"], {"completed", "failed"}, timeout=30
    )
    assert job["status"] == "completed"
    assert len(fake_llm.calls_for(marker)) == 3


async def wait_queue_state(api: ApiServer, queue_job_id: str, state: str) -> None:
    """Wait (bounded) until a bullmq job reaches `state`: a message consumed, not a sleep."""
    for _ in range(300):
        if await api.services.queue.state(queue_job_id) == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"queue job {queue_job_id} never reached {state}")


async def events_barrier(
    client: httpx.AsyncClient, listener: Listener, headers: dict[str, str], prompt: str
) -> None:
    """A later job of the same user, run to its end: its final event comes after every event
    logged before it (one per-user log, relayed in order), so whatever an earlier delivery
    announced has arrived by then. An order, not a sleep, before "nothing else happened"."""
    barrier = await queue(client, headers, prompt)
    await listener.wait_for("job_completed", barrier["jobId"])


@fetch_next_only
@all_stores
async def test_redelivered_message_does_not_generate_again(
    client: httpx.AsyncClient, api: ApiServer, worker: None, fake_llm: FakeLLM, unique: str
) -> None:
    user = await register(client)
    marker = f"[once-{unique}]"
    listener = Listener()
    await listener.connect(api.url, auth={"token": user["token"]})
    try:
        queued = await queue(client, user["headers"], f"x {marker}")
        done = await wait_for_status(client, queued["jobId"], user["headers"], {"completed"})
        await listener.wait_for("job_completed", queued["jobId"])
        # The same message delivered again (a new bullmq job carrying the same jobId).
        data = {
            "jobId": queued["jobId"],
            "userId": user["userId"],
            "prompt": f"x {marker}",
            "contentType": "Blog Post Outline",
        }
        duplicate = str(uuid.uuid4())
        await api.services.queue._queue.add(JOB_NAME, data, {"jobId": duplicate})
        await wait_queue_state(api, duplicate, "completed")  # the worker consumed it
        await events_barrier(client, listener, user["headers"], f"after [barrier-{unique}]")
    finally:
        await listener.close()
    again = await wait_for_status(client, queued["jobId"], user["headers"], {"completed"})
    assert again == done
    assert len(fake_llm.calls_for(marker)) == 1
    assert len(listener.events("job_completed", queued["jobId"])) == 1
    statuses = [e["status"] for e in listener.events("job_status", queued["jobId"])]
    assert statuses == ["queued", "processing", "completed"], statuses


async def test_queue_unavailable_answers_503_and_leaves_no_job(
    settings: Settings, unique: str
) -> None:
    dead = settings.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0", "queue_timeout_seconds": 1.0}
    )
    dead.__dict__.pop("redis_connection_url", None)
    async with ApiServer(dead) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        user = await register(client)
        replies = await asyncio.gather(
            *(
                client.post(
                    "/generate-content",
                    json={"prompt": f"x{i}", "contentType": "Blog Post Outline"},
                    headers=user["headers"],
                )
                for i in range(5)
            )
        )
        for r in replies:  # a whole batch of adds fails: every one of its requests hears it
            assert r.status_code == 503
            assert r.json()["error"] == "queue_unavailable"
            assert "Redis" in r.json()["message"]
        assert (await client.get("/generate-content", headers=user["headers"])).json() == []
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["redis"] == "unavailable"
        assert "redis" in r.json()["message"]


async def test_concurrent_adds_go_to_redis_together_with_the_same_options(
    settings: Settings, unique: str
) -> None:
    """Adds made together share round trips (one MULTI/EXEC of bullmq adds); a job added in
    a batch is stored exactly like one added alone."""
    redis = redis_client(settings, "request")
    producer = GenerationQueue(settings, redis)
    try:
        ids = [str(uuid.uuid4()) for _ in range(31)]

        def data(job_id: str) -> dict[str, str]:
            return {"jobId": job_id, "userId": unique, "contentType": "x", "prompt": "p"}

        await producer.enqueue(job_id=ids[0], data=data(ids[0]), delay_ms=60_000)
        await asyncio.gather(
            *(producer.enqueue(job_id=i, data=data(i), delay_ms=60_000) for i in ids[1:])
        )
        assert producer.adds.items == 31
        assert producer.adds.flushes <= 3  # alone; then one alone and the rest together
        key = f"{settings.queue_prefix}:{settings.queue_name}"
        alone = await redis.hgetall(f"{key}:{ids[0]}")
        for job_id in ids[1:]:
            stored = await redis.hgetall(f"{key}:{job_id}")
            assert stored["name"] == alone["name"] == JOB_NAME
            assert json.loads(stored["opts"]) == {**json.loads(alone["opts"]), "jobId": job_id}
            assert json.loads(stored["data"]) == data(job_id)
            assert stored["delay"] == alone["delay"] == "60000"
            assert await producer.state(job_id) == "delayed"
        # Idempotent in a batch too: the same ids again add nothing.
        await asyncio.gather(
            *(producer.enqueue(job_id=i, data=data(i), delay_ms=60_000) for i in ids)
        )
        assert await redis.zcard(f"{key}:delayed") == 31
    finally:
        await producer.close()


async def test_concurrent_posts_all_complete(
    settings: Settings, fake_llm: FakeLLM, unique: str
) -> None:
    s = settings.model_copy(update={"generate_rate_limit": 0})
    marker = f"[together-{unique}]"
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=20) as client:
        user = await register(client)
        jobs = await asyncio.gather(
            *(queue(client, user["headers"], f"p{i} {marker}") for i in range(30))
        )
        assert api.services.queue.adds.items == 30
        async with running_worker(s):
            for job in jobs:
                done = await wait_for_status(client, job["jobId"], user["headers"], {"completed"})
                assert done["status"] == "completed"
    assert len(fake_llm.calls_for(marker)) == 30


@contextlib.asynccontextmanager
async def bullmq_script_calls(settings: Settings) -> AsyncIterator[list[str]]:
    """The Lua script calls made on the queue's own keys while inside (Redis MONITOR: the
    event log's scripts and the worker registry's, on smartgen's keys, are not bullmq's
    and are not counted)."""
    import redis.asyncio as aioredis

    watcher = aioredis.Redis.from_url(settings.redis_connection_url)
    prefix = f"{settings.queue_prefix}:{settings.queue_name}:"
    calls: list[str] = []
    ready, drained = asyncio.Event(), asyncio.Event()
    sentinel = f"end-of-watch-{uuid.uuid4().hex}"

    async def watch() -> None:
        async with watcher.monitor() as monitor:
            ready.set()
            while True:
                command = str((await monitor.next_command())["command"])
                words = command.split(" ")
                evaluates = words[0] in ("EVALSHA", "EVAL") and len(words) > 3
                key = words[3] if evaluates else ""
                ours = key.startswith(prefix + "smartgen:")  # e.g. the worker registry
                if key.startswith(prefix) and not ours:
                    calls.append(words[3])
                elif words[0] == "ECHO" and sentinel in command:
                    drained.set()

    task = asyncio.create_task(watch())
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield calls
    finally:
        # MONITOR lists commands in the order Redis ran them: once our own ECHO shows up,
        # every command run before it has been seen (an order, not a sleep).
        marker = aioredis.Redis.from_url(settings.redis_connection_url)
        await marker.echo(sentinel)
        await marker.aclose()
        await asyncio.wait_for(drained.wait(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watcher.aclose()


async def test_a_completion_takes_the_next_job_in_the_same_script_call(
    settings: Settings, fake_llm: FakeLLM, unique: str
) -> None:
    """As Node's BullMQ does on a busy queue: completing a job and taking the next one is
    one Lua script call, not two (bullmq for Python completes, then calls moveToActive).
    Every job still runs exactly once, on either path."""
    s = settings.model_copy(
        update={"generate_rate_limit": 0, "worker_concurrency": 1, "generation_delay_seconds": 0}
    )
    marker = f"[chain-{unique}]"
    n = 12
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=20) as client:
        user = await register(client)
        jobs = [await queue(client, user["headers"], f"p{i} {marker}") for i in range(n)]
        for job in jobs:
            assert await api.services.queue.state(job["jobId"]) == "waiting"
        async with bullmq_script_calls(s) as seen, running_worker(s):
            for job in jobs:
                done = await wait_for_status(client, job["jobId"], user["headers"], {"completed"})
                assert done["status"] == "completed" and done["attempts"] == 1
        calls = len(seen)
        for job in jobs:
            assert await api.services.queue.state(job["jobId"]) == "completed"
    if s.worker_fetch_next:
        # One call per job, plus the first take and the worker's start-up and idle checks.
        assert n <= calls <= n + 5, calls
    else:
        assert calls >= 2 * n, calls  # bullmq's stock worker: complete, then moveToActive
    assert sorted(c.prompt for c in fake_llm.calls_for(marker)) == sorted(
        f"p{i} {marker}" for i in range(n)
    )


@fetch_next_only
async def test_an_idle_worker_takes_one_moveToActive_per_wait(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    """bullmq's loop starts WORKER_CONCURRENCY tasks; on an empty queue one waits
    (BZPOPMIN, 5 s at a time) and each other one runs moveToActive for nothing, after every
    wait (bullmq's stock worker, measured by bench/idle.py). With fetch-next they sleep
    in-process: over two waits, after the start-up's takes, about one moveToActive per
    wait."""
    import redis.asyncio as aioredis

    s = settings.model_copy(update={"worker_concurrency": 20})
    queue_keys = f"{s.queue_prefix}:{s.queue_name}:"
    watcher = aioredis.Redis.from_url(s.redis_connection_url)
    waits = 0
    takes = 0  # moveToActive calls (their first key is the wait list) from wait 2 to wait 4
    fourth_wait = asyncio.Event()
    ready = asyncio.Event()

    async def watch() -> None:
        nonlocal waits, takes
        async with watcher.monitor() as monitor:
            ready.set()
            while True:
                words = str((await monitor.next_command())["command"]).split(" ")
                if words[0] == "BZPOPMIN" and words[1].startswith(queue_keys):
                    waits += 1
                    if waits == 4:
                        fourth_wait.set()
                elif words[0] == "EVALSHA" and len(words) > 3 and words[3] == queue_keys + "wait":
                    takes += 2 <= waits < 4

    task = asyncio.create_task(watch())
    await asyncio.wait_for(ready.wait(), 10)
    try:
        async with running_worker(s):
            await asyncio.wait_for(fourth_wait.wait(), 60)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watcher.aclose()
    assert 1 <= takes <= 4, takes  # bullmq's stock loop: 20 or more


@fetch_next_only
@all_stores
async def test_concurrent_duplicate_deliveries_generate_once(
    settings: Settings, fake_llm: FakeLLM, unique: str
) -> None:
    """Two queue messages for one job, due at the same moment: one LLM call, one
    completion, one `job_completed` event."""
    import socketio

    s = settings.model_copy(update={"processing_lease_seconds": 3.0})
    marker = f"[twice-{unique}]"
    fake_llm.script(marker, [Reply(delay=1.0)])
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        user = await register(client)
        events: list[dict] = []
        sio = socketio.AsyncClient()
        sio.on("job_completed", lambda data: events.append(data))
        await sio.connect(api.url, auth={"token": user["token"]}, transports=["websocket"])
        try:
            queued = await queue(client, user["headers"], f"x {marker}")
            data = {
                "jobId": queued["jobId"],
                "userId": user["userId"],
                "prompt": f"x {marker}",
                "contentType": "Blog Post Outline",
            }
            duplicate = str(uuid.uuid4())
            await api.services.queue._queue.add(
                JOB_NAME,
                data,
                {
                    "jobId": duplicate,
                    "delay": 1000,
                    "attempts": 3,
                    "backoff": {"type": "smartgen", "delay": 200},
                },
            )
            async with running_worker(s):
                job = await wait_for_status(
                    client, queued["jobId"], user["headers"], {"completed", "failed"}
                )
                assert job["status"] == "completed"
                # The duplicate retries after the lease, then sees it done.
                await wait_queue_state(api, duplicate, "completed")
                barrier = await queue(client, user["headers"], f"after [barrier-{unique}]")
                for _ in range(300):  # its event comes after anything logged before it
                    if barrier["jobId"] in [e["jobId"] for e in events]:
                        break
                    await asyncio.sleep(0.05)
        finally:
            await sio.disconnect()
    assert len(fake_llm.calls_for(marker)) == 1
    assert [e["jobId"] for e in events] == [queued["jobId"], barrier["jobId"]]


async def test_worker_settles_its_heap_after_start_up_only_when_asked(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smartgen.server import heap

    calls: list[bool] = []
    settled = asyncio.Event()

    def record() -> None:
        calls.append(True)
        settled.set()

    monkeypatch.setattr(heap, "settle_heap", record)
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop=stop, settle_heap=True))
    await asyncio.wait_for(settled.wait(), 15)
    stop.set()
    await asyncio.wait_for(task, 30)
    async with running_worker(settings):  # the default: no settling
        pass
    assert calls == [True]
