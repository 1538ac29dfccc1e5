"""The per-user event log: numbered events, replay with `sync {afterSeq}`, server-sent
events at `GET /events` (resume with Last-Event-ID, nothing missed, nothing twice), and the
numbered Socket.IO room. Real Redis, real HTTP and Socket.IO clients; some tests run real
`smartgen api` and `smartgen worker` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
import socketio

from smartgen.config import Settings
from smartgen.kit.times import utcnow
from smartgen.models import Job, JobStatus
from smartgen.realtime.bus import close_manager, event_log, worker_publisher
from smartgen.redis_clients import redis_client
from tests.conftest import ApiServer, register, start_system, wait_for_status
from tests.fakellm import FakeLLM, Reply

WAIT = 15.0  # bound for any wait; never a speed assertion


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "REGISTER_IP_RATE_LIMIT": "0"}


def make_job(user_id: str, status: JobStatus = JobStatus.completed) -> Job:
    now = utcnow()
    job = Job(
        job_id=f"{time.time_ns()}",
        user_id=user_id,
        status=status,
        prompt="p",
        content_type="Blog Post Outline",
        scheduled_for=now - timedelta(seconds=1),
        created_at=now - timedelta(seconds=2),
        updated_at=now,
    )
    if status == JobStatus.completed:
        job = replace(job, generated_content="# Done", completed_at=now)
    return job


@dataclass
class Frame:
    id: int | None = None
    event: str | None = None
    data: Any = None


@dataclass
class EventStream:
    """One `GET /events` connection, parsed frame by frame."""

    frames: list[Frame] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def read(self, response: httpx.Response) -> None:
        current = Frame()
        data: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith(":"):
                async with self.changed:
                    self.comments.append(line[1:].strip())
                    self.changed.notify_all()
            elif line.startswith("id:"):
                current.id = int(line[3:].strip())
            elif line.startswith("event:"):
                current.event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and (data or current.event):
                current.data = json.loads("\n".join(data)) if data else None
                async with self.changed:
                    self.frames.append(current)
                    self.changed.notify_all()
                current, data = Frame(), []

    async def wait_comments(self, text: str, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: self.comments.count(text) >= count), WAIT
            )

    async def wait(self, count: int) -> list[Frame]:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.frames) >= count), WAIT)
        return self.frames[:count]


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, *, headers: dict[str, str] | None = None, params: Any = None
) -> AsyncIterator[EventStream]:
    stream = EventStream()
    async with client.stream("GET", "/events", headers=headers, params=params) as response:
        stream.status = response.status_code
        if response.status_code != 200:
            await response.aread()
            stream.frames.append(Frame(data=response.json()))
            yield stream
            return
        reader = asyncio.create_task(stream.read(response))
        try:
            yield stream
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await reader


async def publish(api: ApiServer, *jobs: Job) -> None:
    for job in jobs:
        await api.services.notifier.job_changed(job)


async def sync(url: str, token: str, data: Any) -> dict[str, Any]:
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=WAIT)
    try:
        reply: dict[str, Any] = await sio.call("sync", data, timeout=WAIT)
        return reply
    finally:
        await sio.disconnect()
        await sio.shutdown()


# --- numbering and sync {afterSeq} ----------------------------------------------------------
async def test_sync_after_seq_replays_exactly_the_later_events(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    alice, bob = await register(client), await register(client)
    jobs = [make_job(alice["userId"]) for _ in range(3)]  # two events each
    await publish(api, *jobs, make_job(bob["userId"]))

    async def all_logged() -> dict[str, Any]:
        for _ in range(100):
            reply = await sync(api.url, alice["token"], {"afterSeq": 0})
            if len(reply["events"]) == 6:
                return reply
            await asyncio.sleep(0.05)
        raise AssertionError(reply)

    reply = await all_logged()
    assert [e["seq"] for e in reply["events"]] == [1, 2, 3, 4, 5, 6]
    assert [(e["event"], e["data"]["jobId"]) for e in reply["events"]] == [
        (name, job.job_id) for job in jobs for name in ("job_status", "job_completed")
    ]
    assert reply["complete"] is True and reply["lastSeq"] == 6
    later = await sync(api.url, alice["token"], {"afterSeq": 4})
    assert [e["seq"] for e in later["events"]] == [5, 6] and later["complete"] is True
    none = await sync(api.url, alice["token"], {"afterSeq": 6})
    assert none["events"] == [] and none["complete"] is True
    # A number this log never gave (a Redis that lost its data since): not complete.
    ahead = await sync(api.url, alice["token"], {"afterSeq": 99})
    assert ahead["complete"] is False and ahead["lastSeq"] == 6
    # Bob's log is his own.
    bobs = await sync(api.url, bob["token"], {"afterSeq": 0})
    assert [e["seq"] for e in bobs["events"]] == [1, 2]
    assert all(e["data"]["userId"] == bob["userId"] for e in bobs["events"])
    for bad in (-1, "3", True, 1.5, None):
        answer = await sync(api.url, alice["token"], {"afterSeq": bad})
        assert answer["error"] == "bad_request", (bad, answer)


async def test_a_trimmed_log_says_it_is_incomplete(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    # The fresh event must still be in the log when it is read: a log that keeps events
    # for 3 s leaves room for a stalled machine (1 s was once not enough).
    s = settings.model_copy(update={"event_log_max_age_seconds": 3.0})
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as c:
        user = await register(c)
        await publish(api, make_job(user["userId"]))
        await asyncio.sleep(3.3)  # older than the log keeps
        fresh = make_job(user["userId"], JobStatus.processing)
        await publish(api, fresh)

        async def settled() -> dict[str, Any]:
            for _ in range(100):
                reply = await sync(api.url, user["token"], {"afterSeq": 0})
                if reply["lastSeq"] == 3:
                    return reply
                await asyncio.sleep(0.05)
            raise AssertionError(reply)

        reply = await settled()
        assert [e["seq"] for e in reply["events"]] == [3]  # the two old ones are gone
        assert reply["complete"] is False
        assert (await sync(api.url, user["token"], {"afterSeq": 2}))["complete"] is True


# --- GET /events ------------------------------------------------------------------------------
async def test_event_stream_replays_then_follows_and_resumes_without_gaps(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    alice, bob = await register(client), await register(client)
    first = make_job(alice["userId"])
    await publish(api, first)
    await asyncio.sleep(0.3)
    async with open_stream(client, headers=alice["headers"], params={"afterSeq": 0}) as stream:
        assert stream.status == 200
        replayed = await stream.wait(2)
        assert [(f.id, f.event) for f in replayed] == [(1, "job_status"), (2, "job_completed")]
        assert replayed[1].data["jobId"] == first.job_id
        assert set(replayed[1].data) == {
            "userId", "jobId", "status", "generatedContent", "completedAt"
        }  # fmt: skip
        live = make_job(alice["userId"], JobStatus.processing)
        await publish(api, make_job(bob["userId"]), live)
        [_, _, third] = await stream.wait(3)
        assert (third.id, third.event, third.data["jobId"]) == (3, "job_status", live.job_id)
    # While no one listens, events go on being logged…
    missed = [make_job(alice["userId"]) for _ in range(2)]
    await publish(api, *missed)
    await asyncio.sleep(0.3)
    # …and a reconnection with the last id it saw gets exactly those, then live ones.
    headers = {**alice["headers"], "Last-Event-ID": "3"}
    async with open_stream(client, headers=headers) as stream:
        frames = await stream.wait(4)
        assert [f.id for f in frames] == [4, 5, 6, 7]
        assert [f.data["jobId"] for f in frames] == [j.job_id for j in missed for _ in (0, 1)]
        await publish(api, make_job(alice["userId"], JobStatus.processing))
        frames = await stream.wait(5)
        assert [f.id for f in frames] == [4, 5, 6, 7, 8]
        # Nothing twice: the next event is the next frame (an order, not a sleep).
        await publish(api, make_job(alice["userId"], JobStatus.processing))
        frames = await stream.wait(6)
        assert [f.id for f in stream.frames] == [4, 5, 6, 7, 8, 9]


async def test_event_stream_auth_and_bad_requests(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    user = await register(client)
    async with open_stream(client) as stream:
        assert stream.status == 401 and stream.frames[0].data["error"] == "missing_token"
    async with open_stream(client, params={"token": "nope"}) as stream:
        assert stream.status == 401
    # EventSource cannot send headers: the token as a query parameter.
    async with open_stream(client, params={"token": user["token"], "afterSeq": 0}) as stream:
        assert stream.status == 200
        await publish(api, make_job(user["userId"]))
        frames = await stream.wait(2)
        assert [f.id for f in frames] == [1, 2]
    bad = {**user["headers"], "Last-Event-ID": "yesterday"}
    async with open_stream(client, headers=bad) as stream:
        assert stream.status == 422
    async with open_stream(client, headers=user["headers"], params={"afterSeq": -1}) as stream:
        assert stream.status == 422


async def test_event_stream_sends_heartbeats(settings: Settings) -> None:
    s = settings.model_copy(update={"events_heartbeat_seconds": 0.2})
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as c:
        user = await register(c)
        async with open_stream(c, headers=user["headers"]) as stream:
            await stream.wait_comments("ping", 2)
            assert stream.frames == []


async def test_event_stream_follows_a_real_worker_across_processes(
    env: dict[str, str], unique: str, processes: list[Any], fake_llm: FakeLLM
) -> None:
    """Real `smartgen api` and `smartgen worker`: the worker's events reach the API
    process's event stream through Redis, numbered, in order, each once."""
    # Written over more than one progress interval, so live text comes too.
    words = " ".join(f"s{i}" for i in range(30))
    fake_llm.script(f"sse [{unique}]", [Reply(content=f"{words} [{unique}]", chunk_delay=0.01)])
    _, _, url = await start_system({**env, "GENERATION_DELAY_SECONDS": "0"}, processes)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        user = await register(client)
        async with open_stream(client, headers=user["headers"]) as stream:
            r = await client.post(
                "/generate-content",
                json={"prompt": f"sse [{unique}]", "contentType": "Blog Post Outline"},
                headers=user["headers"],
            )
            job_id = r.json()["jobId"]
            await wait_for_status(client, job_id, user["headers"], {"completed"})
            deadline = time.monotonic() + WAIT
            while not any(f.event == "job_completed" for f in stream.frames):
                assert time.monotonic() < deadline, stream.frames
                await asyncio.sleep(0.05)
            ids = [f.id for f in stream.frames]
            assert ids == list(range(1, len(ids) + 1))
            statuses = [f.data["status"] for f in stream.frames if f.event == "job_status"]
            assert statuses == ["queued", "processing", "completed"]
            assert [f.event for f in stream.frames][-1] == "job_completed"
            # The live text came through the same stream, in order.
            text = "".join(f.data["delta"] for f in stream.frames if f.event == "job_progress")
            done = (await client.get(f"/generate-content/{job_id}", headers=user["headers"])).json()
            assert text.strip() == done["generatedContent"]


async def test_worker_events_are_numbered_in_the_same_log(
    api: ApiServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    """Events from another process (a worker's publisher) and from this API process share
    one numbering per user."""
    user = await register(client)
    redis = redis_client(settings, "request")
    publisher, manager = worker_publisher(settings, event_log(settings, redis))
    try:
        await publish(api, make_job(user["userId"], JobStatus.processing))
        await asyncio.sleep(0.2)
        await publisher.job_changed(make_job(user["userId"]))
        await publisher.close()
        reply = await sync(api.url, user["token"], {"afterSeq": 0})
        assert [e["seq"] for e in reply["events"]] == [1, 2, 3]
        names = [e["event"] for e in reply["events"]]
        assert names == ["job_status", "job_status", "job_completed"]
    finally:
        await close_manager(manager)
        await redis.aclose()


async def test_the_log_publishes_a_batch_in_the_call_that_numbers_it(settings: Settings) -> None:
    """A worker's events are logged and published in one call (`EventLog.append` with a
    plan): one message, numbered as the log numbered them, none for a batch logged
    before; the worker's bus opens no Redis connection of its own to publish."""
    redis = redis_client(settings, "request")
    listener = redis_client(settings, "pubsub")
    publisher, manager = worker_publisher(settings, event_log(settings, redis))
    pubsub = listener.pubsub()
    try:
        await pubsub.subscribe(manager.channel)
        assert (await pubsub.get_message(timeout=WAIT))["type"] == "subscribe"
        job = make_job(f"u{time.time_ns()}")
        await publisher.job_changed(job, settled=True)
        await publisher.job_changed(job, settled=True)  # announced again: logged before
        await publisher.close()
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WAIT)
        assert message is not None
        batch = json.loads(message["data"])
        assert [m["event"] for m in batch["messages"]] == ["job_status", "job_completed"]
        assert batch["seqs"] == [1, 2]
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5) is None
        assert manager.redis is None  # nothing was published through the bus's own client
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await close_manager(manager)
        await redis.aclose()


# --- the numbered Socket.IO room --------------------------------------------------------------
async def test_socket_that_asks_gets_seq_in_every_payload(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    user = await register(client)
    seed, numbered = socketio.AsyncClient(), socketio.AsyncClient()
    got: dict[str, list[tuple[str, dict[str, Any]]]] = {"seed": [], "numbered": []}
    for name, sio in (("seed", seed), ("numbered", numbered)):
        for event in ("job_status", "job_completed"):
            sio.on(event, (lambda n, e: lambda data: got[n].append((e, data)))(name, event))
    await seed.connect(api.url, auth={"token": user["token"]}, transports=["websocket"])
    await numbered.connect(
        api.url, auth={"token": user["token"], "seq": True}, transports=["websocket"]
    )
    try:
        job = make_job(user["userId"])
        await publish(api, job)
        deadline = time.monotonic() + WAIT
        while min(len(got["seed"]), len(got["numbered"])) < 2:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
        (_, seed_status), (_, seed_done) = got["seed"]
        (_, status), (_, done) = got["numbered"]
        assert list(seed_done) == ["userId", "jobId", "status", "generatedContent", "completedAt"]
        assert done == {**seed_done, "seq": 2}
        assert status == seed_status and status["seq"] == 1
    finally:
        for sio in (seed, numbered):
            await sio.disconnect()
            await sio.shutdown()


async def test_a_final_state_announced_again_is_logged_and_sent_once(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    """A worker that takes over a crashed one's job finds it final and announces it again:
    only what was not logged before goes out (one final event per run of a job), and a
    later run of the same job (a retry) is announced anew."""
    user = await register(client)
    listener = socketio.AsyncClient()
    got: list[tuple[str, Any]] = []
    for name in ("job_status", "job_completed", "job_failed"):
        listener.on(name, (lambda n: lambda data: got.append((n, data)))(name))
    await listener.connect(api.url, auth={"token": user["token"]}, transports=["websocket"])
    try:
        failed = make_job(user["userId"], JobStatus.failed)
        failed = replace(failed, failed_at=failed.updated_at, error="boom")
        await publish(api, failed, failed, failed)
        again = replace(failed, history=[{"status": "failed"}])  # its second run
        await publish(api, again, again)
        marker = make_job(user["userId"], JobStatus.processing)
        await publish(api, marker)
        deadline = time.monotonic() + WAIT
        while not any(d.get("jobId") == marker.job_id for _, d in got):
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
    finally:
        await listener.disconnect()
        await listener.shutdown()
    mine = [(n, d.get("status")) for n, d in got if d.get("jobId") == failed.job_id]
    assert mine == [("job_status", "failed"), ("job_failed", "failed")] * 2
    reply = await sync(api.url, user["token"], {"afterSeq": 0})
    assert [e["seq"] for e in reply["events"]] == [1, 2, 3, 4, 5]
