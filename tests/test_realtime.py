"""Socket.IO delivery against the in-process API, with python-socketio's AsyncClient:
handshake auth (auth.token, Authorization header, ?token=), refusal reasons, rooms and
isolation, exact payloads, expiry disconnect, `sync`, and the worker's Redis path."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
import socketio
from redis import asyncio as aioredis

from smartgen.config import Settings
from smartgen.kit.times import iso_ms, utcnow
from smartgen.models import Job, JobStatus
from smartgen.realtime.bus import close_manager, event_channel, worker_publisher
from smartgen.realtime.events import Event, EventPublisher
from tests.conftest import JWT_SECRET, ApiServer, Process, free_port, register, wait_http

WAIT = 15.0  # upper bound for any single wait; never a speed assertion
# Polling first then upgrade (the default), and websocket only. (python-engineio's client
# waits for its pending long-poll when it disconnects over polling only: up to 45 s.)
TRANSPORTS = {"upgrade": None, "websocket": ["websocket"]}


@pytest.fixture(
    params=[("true", "true"), ("false", "true"), ("true", "false")],
    ids=["batched-relay", "stock-relay", "stock-connections"],
)
def env(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    """The shared environment without the per-address registration limit: these tests
    register many users from 127.0.0.1 and must neither hit it nor use up its budget.
    Every test runs on both relays between processes: batched (the default,
    realtime/batched_relay.py) and python-socketio's own (REALTIME_BATCHED_RELAY=false);
    and on both kinds of per-connection objects: compact (the default,
    server/compact_websocket.py, realtime/engineio_asgi.py) and the libraries' stock
    ones (SOCKETIO_COMPACT_CONNECTIONS=false)."""
    relay, compact = request.param
    return {
        **env,
        "REGISTER_IP_RATE_LIMIT": "0",
        "REALTIME_BATCHED_RELAY": relay,
        "SOCKETIO_COMPACT_CONNECTIONS": compact,
    }


class Listener:
    """One Socket.IO connection that records every event it receives, in order."""

    EVENTS = ("job_status", "job_completed", "job_failed", "token_expired")

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: list[tuple[str, Any]] = []  # payloads without their `seq`
        self.numbers: list[int] = []  # the `seq` of each event that carried one, in order
        self.connect_errors: list[Any] = []
        self.disconnected = asyncio.Event()
        self.disconnected_at: float | None = None
        self._changed = asyncio.Condition()
        for event in self.EVENTS:
            self.sio.on(event, self._recorder(event))
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("disconnect", self._on_disconnect)

    def _recorder(self, event: str) -> Callable[[Any], Awaitable[None]]:
        async def record(data: Any) -> None:
            async with self._changed:
                if isinstance(data, dict) and "seq" in data:
                    self.numbers.append(data["seq"])
                    data = {k: v for k, v in data.items() if k != "seq"}
                self.received.append((event, data))
                self._changed.notify_all()

        return record

    async def _on_connect_error(self, data: Any = None) -> None:
        self.connect_errors.append(data)

    async def _on_disconnect(self, *args: Any) -> None:
        self.disconnected_at = time.time()
        self.disconnected.set()

    async def connect(self, url: str, *, transports: list[str] | None = None, **kw: Any) -> None:
        await self.sio.connect(url, transports=transports, wait_timeout=WAIT, **kw)

    def events(self, name: str, job_id: str | None = None) -> list[Any]:
        return [
            data
            for event, data in self.received
            if event == name and (job_id is None or data.get("jobId") == job_id)
        ]

    async def wait_for(
        self, name: str, job_id: str, count: int = 1, *, within: float = WAIT
    ) -> list[Any]:
        """The first `count` `name` events for `job_id`, waiting at most `within` seconds."""

        def enough() -> bool:
            return len(self.events(name, job_id)) >= count

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(enough), within)
            except TimeoutError:
                raise AssertionError(
                    f"no {name} for job {job_id} within {within}s; got {self.received}"
                ) from None
        return self.events(name, job_id)[:count]

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        await self.sio.shutdown()


@pytest.fixture
async def listeners() -> AsyncIterator[Callable[[], Listener]]:
    made: list[Listener] = []

    def make() -> Listener:
        listener = Listener()
        made.append(listener)
        return listener

    yield make
    for listener in made:
        await listener.close()


def make_job(user_id: str, status: JobStatus = JobStatus.completed, **changes: Any) -> Job:
    now = utcnow()
    job = Job(
        job_id=str(uuid.uuid4()),
        user_id=user_id,
        status=status,
        prompt="How to bake a sourdough bread",
        content_type="Blog Post Outline",
        scheduled_for=now - timedelta(seconds=2),
        created_at=now - timedelta(seconds=3),
        updated_at=now,
    )
    if status == JobStatus.completed:
        job = replace(job, completed_at=now, generated_content="# Sourdough\n\n- Starter\n")
    elif status == JobStatus.failed:
        job = replace(job, failed_at=now, error="Generation failed: provider unavailable")
    elif status == JobStatus.processing:
        job = replace(job, started_at=now)
    return replace(job, **changes)


def mint(settings: Settings, user_id: str, *, expires_in: float, secret: str = JWT_SECRET) -> str:
    """A token as the API issues it, with a chosen lifetime (negative: already expired)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": int(now + expires_in)}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, secret, algorithm="HS256")


def completed_payload(job: Job) -> dict[str, Any]:
    assert job.completed_at is not None
    return {
        "userId": job.user_id,
        "jobId": job.job_id,
        "status": "completed",
        "generatedContent": job.generated_content,
        "completedAt": iso_ms(job.completed_at),
    }


def status_payload(job: Job) -> dict[str, Any]:
    return {
        "userId": job.user_id,
        "jobId": job.job_id,
        "status": job.status.value,
        "at": iso_ms(job.updated_at),
    }


# --- handshake ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("way", ["auth", "header", "query"])
async def test_connect_and_receive(
    api: ApiServer,
    client: httpx.AsyncClient,
    listeners: Callable[[], Listener],
    way: str,
    transport: str,
) -> None:
    user = await register(client)
    listener = listeners()
    url, kwargs = api.url, dict[str, Any]()
    if way == "auth":
        kwargs = {"auth": {"token": user["token"]}}
    elif way == "header":
        kwargs = {"headers": {"Authorization": f"Bearer {user['token']}"}}
    else:
        url = f"{api.url}/?token={quote(user['token'])}"
    await listener.connect(url, transports=TRANSPORTS[transport], **kwargs)
    assert listener.sio.connected

    # The connection joined its user's room: an event for the user's job arrives.
    job = make_job(user["userId"])
    await api.services.notifier.job_changed(job)
    [payload] = await listener.wait_for("job_completed", job.job_id)
    assert payload == completed_payload(job)


async def test_auth_token_wins_over_header_and_query(
    api: ApiServer, client: httpx.AsyncClient, listeners: Callable[[], Listener]
) -> None:
    alice, bob = await register(client), await register(client)
    listener = listeners()
    await listener.connect(
        f"{api.url}/?token={quote(bob['token'])}",
        auth={"token": alice["token"]},
        headers={"Authorization": f"Bearer {bob['token']}"},
    )
    bobs, alices = make_job(bob["userId"]), make_job(alice["userId"])
    await api.services.notifier.job_changed(bobs)
    await api.services.notifier.job_changed(alices)
    await listener.wait_for("job_completed", alices.job_id)
    assert listener.events("job_completed", bobs.job_id) == []


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "missing token"),
        ("empty", "missing token"),
        ("malformed", "Malformed token"),
        ("expired", "Token has expired"),
        ("expired_within_leeway", "Token has expired"),
        ("wrong_signature", "Token signature is invalid"),
        ("not_bearer_header", "Authorization header must be: Bearer <token>"),
        ("malformed_query", "Malformed token"),
    ],
)
async def test_refusal_reasons(
    api: ApiServer,
    settings: Settings,
    listeners: Callable[[], Listener],
    case: str,
    reason: str,
) -> None:
    user_id = uuid.uuid4().hex[:24]
    url, kwargs = api.url, dict[str, Any]()
    if case == "empty":
        kwargs = {"auth": {"token": ""}}
    elif case == "malformed":
        kwargs = {"auth": {"token": "not-a-jwt"}}
    elif case == "expired":
        kwargs = {"auth": {"token": mint(settings, user_id, expires_in=-120)}}
    elif case == "expired_within_leeway":  # HTTP tolerates 5 s of skew; a socket would
        kwargs = {"auth": {"token": mint(settings, user_id, expires_in=-2)}}  # die at once
    elif case == "wrong_signature":
        other = "another-secret-" + "y" * 40
        kwargs = {"auth": {"token": mint(settings, user_id, expires_in=600, secret=other)}}
    elif case == "not_bearer_header":
        kwargs = {"headers": {"Authorization": "Basic dXNlcjpwYXNz"}}
    elif case == "malformed_query":
        url = f"{api.url}/?token=abc.def"
    listener = listeners()
    with pytest.raises(socketio.exceptions.ConnectionError) as refused:
        await listener.connect(url, **kwargs)
    # python-socketio's exception names the namespace; the server's reason (what the JS
    # client gets as `connect_error`) is handed to the `connect_error` handler.
    assert "failed to connect" in str(refused.value)
    assert len(listener.connect_errors) == 1
    error = listener.connect_errors[0]
    assert isinstance(error, dict)
    assert reason.lower() in error["message"].lower(), error
    assert not listener.sio.connected


# --- rooms, tabs, isolation, payloads -------------------------------------------------------


async def test_tabs_and_isolation(
    api: ApiServer, client: httpx.AsyncClient, listeners: Callable[[], Listener]
) -> None:
    alice, bob = await register(client), await register(client)
    tab1, tab2, bobs_tab = listeners(), listeners(), listeners()
    await tab1.connect(api.url, auth={"token": alice["token"]}, transports=["websocket"])
    await tab2.connect(api.url, auth={"token": alice["token"]})
    await bobs_tab.connect(api.url, auth={"token": bob["token"]})

    notifier = api.services.notifier
    done = make_job(alice["userId"])
    failed = make_job(alice["userId"], JobStatus.failed)
    for_bob = make_job(bob["userId"], JobStatus.processing)
    last = make_job(alice["userId"], JobStatus.processing)
    # Alice's events, then Bob's, then Alice's again: events reach each socket in order,
    # so once a client holds the last event addressed to it, it has seen everything.
    for job in (done, failed, for_bob, last):
        await notifier.job_changed(job)

    for tab in (tab1, tab2):
        await tab.wait_for("job_status", last.job_id)
        assert [(e, d["jobId"]) for e, d in tab.received] == [
            ("job_status", done.job_id),
            ("job_completed", done.job_id),
            ("job_status", failed.job_id),
            ("job_failed", failed.job_id),
            ("job_status", last.job_id),
        ]
        assert tab.events("job_completed") == [completed_payload(done)]
        assert tab.events("job_failed") == [
            {
                "userId": alice["userId"],
                "jobId": failed.job_id,
                "status": "failed",
                "error": "Generation failed: provider unavailable",
                "failedAt": iso_ms(failed.failed_at or failed.updated_at),
            }
        ]
        assert tab.events("job_status") == [status_payload(j) for j in (done, failed, last)]

    await bobs_tab.wait_for("job_status", for_bob.job_id)
    assert bobs_tab.received == [("job_status", status_payload(for_bob))]
    # Each user's events are numbered in their own log, strictly increasing; the seed's
    # job_completed carries no number.
    for tab in (tab1, tab2):
        assert len(tab.numbers) == 4 and tab.numbers == sorted(set(tab.numbers))
    assert tab1.numbers == tab2.numbers
    assert len(bobs_tab.numbers) == 1


async def test_seed_payload_has_exactly_five_keys(
    api: ApiServer, client: httpx.AsyncClient, listeners: Callable[[], Listener]
) -> None:
    user = await register(client)
    listener = listeners()
    await listener.connect(api.url, auth={"token": user["token"]})
    # Extra fields on the record (model, usage, attempts…) never leak into the event.
    job = make_job(user["userId"], model="fake/model-1", usage={"total_tokens": 3}, attempts=2)
    await api.services.notifier.job_changed(job)
    [payload] = await listener.wait_for("job_completed", job.job_id)
    assert list(payload) == ["userId", "jobId", "status", "generatedContent", "completedAt"]
    assert payload["completedAt"].endswith("Z") and len(payload["completedAt"]) == 24
    [status] = await listener.wait_for("job_status", job.job_id)
    assert set(status) == {"userId", "jobId", "status", "at"}


async def test_queueing_emits_job_status_queued_to_every_tab(
    api: ApiServer, client: httpx.AsyncClient, listeners: Callable[[], Listener]
) -> None:
    alice, bob = await register(client), await register(client)
    tabs = [listeners(), listeners()]
    for tab in tabs:
        await tab.connect(api.url, auth={"token": alice["token"]})
    bobs_tab = listeners()
    await bobs_tab.connect(api.url, auth={"token": bob["token"]})

    r = await client.post(
        "/generate-content",
        json={"prompt": "alice's topic", "contentType": "Social Media Caption"},
        headers=alice["headers"],
    )
    assert r.status_code == 202, r.text
    alices_job = r.json()["jobId"]
    r = await client.post(
        "/generate-content",
        json={"prompt": "bob's topic", "contentType": "Social Media Caption"},
        headers=bob["headers"],
    )
    bobs_job = r.json()["jobId"]
    stored = await api.services.store.jobs.get(alices_job)
    for tab in tabs:
        [event] = await tab.wait_for("job_status", alices_job)
        assert event == status_payload(stored)
        assert event["status"] == "queued"
    await bobs_tab.wait_for("job_status", bobs_job)
    assert bobs_tab.events("job_status", alices_job) == []


async def test_second_api_process_receives_events_through_redis(
    env: dict[str, str],
    processes: list[Process],
    client: httpx.AsyncClient,
    listeners: Callable[[], Listener],
) -> None:
    """A job queued through this API reaches a client of another, real `smartgen api`
    process (the same Redis and store) through Redis."""
    user = await register(client)
    port = free_port()
    other = Process("api", env, PORT=str(port))
    processes.append(other)
    await wait_http(f"http://127.0.0.1:{port}", other)
    listener = listeners()
    await listener.connect(f"http://127.0.0.1:{port}", auth={"token": user["token"]})
    r = await client.post(
        "/generate-content",
        json={"prompt": "across processes", "contentType": "Blog Post Outline"},
        headers=user["headers"],
    )
    assert r.status_code == 202, r.text
    [event] = await listener.wait_for("job_status", r.json()["jobId"])
    assert event["status"] == "queued"
    await listener.close()


# --- the worker's path: a write-only Redis manager ------------------------------------------


async def test_worker_publisher_reaches_api_clients(
    api: ApiServer,
    settings: Settings,
    client: httpx.AsyncClient,
    listeners: Callable[[], Listener],
) -> None:
    alice, bob = await register(client), await register(client)
    alices, bobs = listeners(), listeners()
    await alices.connect(api.url, auth={"token": alice["token"]}, transports=["websocket"])
    await bobs.connect(api.url, auth={"token": bob["token"]})

    publisher, manager = worker_publisher(settings)
    try:
        assert manager.write_only
        publisher.start()
        processing = make_job(alice["userId"], JobStatus.processing)
        done = replace(
            processing,
            status=JobStatus.completed,
            generated_content="# From the worker",
            completed_at=processing.updated_at + timedelta(milliseconds=5),
            updated_at=processing.updated_at + timedelta(milliseconds=5),
        )
        bobs_job = make_job(bob["userId"], JobStatus.failed)
        for job in (processing, done, bobs_job):
            await publisher.job_changed(job)
        [payload] = await alices.wait_for("job_completed", done.job_id)
        assert payload == completed_payload(done)
        assert [e for e, _ in alices.received] == ["job_status", "job_status", "job_completed"]
        assert [d["status"] for d in alices.events("job_status")] == ["processing", "completed"]
        await bobs.wait_for("job_failed", bobs_job.job_id)
        assert bobs.events("job_status", done.job_id) == []
    finally:
        await publisher.close()
        await close_manager(manager)
    assert publisher.sent == 5 and publisher.dropped == 0


async def test_a_batch_of_events_is_one_published_message(
    api: ApiServer,
    settings: Settings,
    client: httpx.AsyncClient,
    listeners: Callable[[], Listener],
) -> None:
    alice = await register(client)
    alices = listeners()
    await alices.connect(api.url, auth={"token": alice["token"]}, transports=["websocket"])
    jobs = [make_job(alice["userId"], JobStatus.processing) for _ in range(3)]
    events: list[Event] = [
        ("job_status", {"jobId": j.job_id, "n": i}, f"user:{alice['userId']}", None)
        for i, j in enumerate(jobs)
    ]
    spy = aioredis.Redis.from_url(settings.redis_connection_url)
    pubsub = spy.pubsub()
    _, manager = worker_publisher(settings)
    try:
        await pubsub.subscribe(event_channel(settings))
        await manager.emit_many(events)
        published = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not published:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                published.append(message)
        await alices.wait_for("job_status", jobs[-1].job_id)
        assert [d["n"] for d in alices.events("job_status")] == [0, 1, 2]
        while more := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3):
            published.append(more)
        # One message for the three events; python-socketio's own relay sends one each.
        assert len(published) == (1 if settings.realtime_batched_relay else 3)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await spy.aclose()
        await close_manager(manager)


async def test_events_for_rooms_without_a_client_here_are_never_encoded(
    api: ApiServer,
    settings: Settings,
    client: httpx.AsyncClient,
    listeners: Callable[[], Listener],
) -> None:
    """Most events name a room with no client in this process (the owner is offline, or
    on another API process): they are skipped before python-socketio encodes them, both
    from Redis and from this process's own publisher, while the clients here still get
    every event of theirs."""
    alice, bob = await register(client), await register(client)
    alices = listeners()
    await alices.connect(api.url, auth={"token": alice["token"]}, transports=["websocket"])
    realtime = api.app.realtime
    manager = realtime.manager
    handled: list[str] = []
    handle_emit = manager._handle_emit

    async def counting(message: dict[str, Any]) -> None:
        handled.append(message["room"])
        await handle_emit(message)

    manager._handle_emit = counting
    alice_room = f"user:{alice['userId']}"
    # From this process: bob (no socket anywhere) queues a job, then alice does.
    for user in (bob, alice):
        r = await client.post(
            "/generate-content",
            json={"prompt": "rooms", "contentType": "Blog Post Outline"},
            headers=user["headers"],
        )
        assert r.status_code == 202, r.text
    await alices.wait_for("job_status", r.json()["jobId"])
    # From the worker, through Redis: offline owners' jobs around one of alice's.
    publisher, worker_manager = worker_publisher(settings)
    try:
        publisher.start()
        offline = [make_job(str(uuid.uuid4())) for _ in range(4)]
        hers = make_job(alice["userId"])
        for job in [*offline[:2], hers, *offline[2:]]:
            await publisher.job_changed(job)
        await alices.wait_for("job_completed", hers.job_id)
    finally:
        await publisher.close()
        await close_manager(worker_manager)
    assert [e for e, _ in alices.received] == ["job_status", "job_status", "job_completed"]
    if not settings.realtime_batched_relay:
        # python-socketio's own relay encodes every event for every room.
        assert set(handled) >= {alice_room, f"user:{bob['userId']}"}
        assert manager.reaches_a_client({"method": "emit", "room": "user:nobody"})
        return
    assert set(handled) == {alice_room}
    # Her queued job_status, then the worker's job_status and job_completed.
    assert len(handled) == 3
    # Broadcasts and anything but an emit to one room still pass.
    assert manager.reaches_a_client({"method": "emit", "room": None})
    assert manager.reaches_a_client({"method": "emit", "room": ["a", "b"]})
    assert manager.reaches_a_client({"method": "disconnect", "room": "user:nobody"})
    assert not manager.reaches_a_client({"method": "emit", "room": "user:nobody"})
    assert not manager.reaches_a_client(
        {"method": "emit", "room": alice_room, "namespace": "/other"}
    )


def test_a_process_skips_its_own_batches_undecoded(settings: Settings) -> None:
    from smartgen.realtime.batched_relay import BATCH_METHOD
    from smartgen.realtime.bus import redis_manager

    ours, theirs = (redis_manager(settings, write_only=False) for _ in range(2))
    assert ours.host_id != theirs.host_id
    dumps = ours.json.dumps  # as `emit_many` writes a batch
    batch = {"method": BATCH_METHOD, "host_id": ours.host_id, "messages": [{"a": 1}]}
    assert ours._from_this_process(dumps(batch).encode())
    assert ours._from_this_process(dumps(batch))
    assert not theirs._from_this_process(dumps(batch).encode())
    # Another process's batch, and python-socketio's own single messages, are decoded.
    assert not ours._from_this_process(dumps({**batch, "host_id": theirs.host_id}))
    single = {"method": "emit", "event": "x", "host_id": ours.host_id}
    assert not ours._from_this_process(dumps(single))


def test_manager_messages_keep_only_manager_messages() -> None:
    import json

    from smartgen.realtime.batched_relay import BATCH_METHOD, manager_messages

    one = {"method": "emit", "event": "job_status"}
    assert manager_messages(json, json.dumps(one)) == [one]
    batch = {"method": BATCH_METHOD, "messages": [one, 5, "x", {**one, "event": "b"}]}
    assert manager_messages(json, json.dumps(batch).encode()) == [one, {**one, "event": "b"}]
    assert manager_messages(json, b"not json") == []
    assert manager_messages(json, "[1, 2]") == []
    assert manager_messages(json, json.dumps({"method": BATCH_METHOD, "messages": "nope"})) == []


def test_a_batch_published_by_the_event_log_gets_its_numbers() -> None:
    """The log's call publishes a batch with its numbers after the messages
    (`publish_plan`): each message gets its `seq`, each payload too but the seed's, and an
    event numbered 0 (logged before) is not delivered again."""
    import json

    from smartgen.realtime.batched_relay import BATCH_METHOD, manager_messages

    def emit(event: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"method": "emit", "event": event, "data": [payload], "room": "user:u", "seq": None}

    status, done = {"jobId": "j", "status": "completed"}, {"jobId": "j", "generatedContent": "x"}
    messages = [emit("job_status", status), emit("job_completed", done), emit("job_status", {})]
    head = json.dumps({"method": BATCH_METHOD, "host_id": "h", "messages": messages})[:-1]
    got = manager_messages(json, head + ',"seqs":[7,8,0]}')
    assert got == [
        {**messages[0], "data": [{**status, "seq": 7}], "seq": 7},
        {**messages[1], "data": [done], "seq": 8},  # the seed's payload as the seed has it
    ]
    # Numbers that do not match the events: nothing is delivered rather than misnumbered.
    assert manager_messages(json, head + ',"seqs":[7,8]}') == []
    assert manager_messages(json, head + ',"seqs":[7,true,"9"]}') == [got[0]]


async def test_api_subscribes_before_first_handshake_and_closes_its_connections(
    settings: Settings, listeners: Callable[[], Listener]
) -> None:
    probe = aioredis.Redis.from_url(settings.redis_connection_url)

    async def connections() -> int:
        return len(await probe.client_list()) - 1  # not counting the probe itself

    async def subscribers() -> int:
        channel = event_channel(settings)
        return int(dict(await probe.pubsub_numsub(channel))[channel.encode()])

    try:
        before = await connections()
        async with ApiServer(settings) as server, httpx.AsyncClient(base_url=server.url) as http:
            user = await register(http)
            # A job queued before any socket connects: the process publishes first and
            # subscribes later (once, with the same client, closed at shutdown).
            first = await queue_job(http, user, "before any socket")
            listener = listeners()
            subscribed_before = await subscribers()
            await listener.connect(server.url, auth={"token": user["token"]})
            # "connected" means this process's subscription is live: nothing published
            # from now on can be missed.
            assert await subscribers() == subscribed_before + 1
            second = await queue_job(http, user, "after the socket")
            await listener.wait_for("job_status", second)
            assert listener.events("job_status", first) == []
            await listener.close()
        gc.collect()  # a leaked Redis client would warn here (warnings are errors)
        # Redis notices closed connections on its own schedule: poll, bounded.
        deadline = time.monotonic() + WAIT
        left = await connections()
        while left > before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            left = await connections()
        assert left <= before
    finally:
        await probe.aclose()


async def test_publisher_never_blocks_on_delivery() -> None:
    release = asyncio.Event()
    delivered: list[str] = []

    async def stuck_emit(events: list[Event]) -> None:
        await release.wait()
        delivered.extend(event for event, _, _, _ in events)

    publisher = EventPublisher(stuck_emit, max_pending=3)
    user_id = uuid.uuid4().hex[:24]
    try:
        # Each completed job is two events; the first job's are in flight (stuck), the
        # queue holds three more: later events overflow and are dropped, and
        # job_changed itself never waits.
        for _ in range(4):
            await asyncio.wait_for(publisher.job_changed(make_job(user_id)), WAIT)
        assert publisher.dropped >= 2
        release.set()
    finally:
        await asyncio.wait_for(publisher.close(grace=WAIT), WAIT + 1)
    assert delivered[:2] == ["job_status", "job_completed"]


async def test_publisher_sends_pending_events_together_in_order() -> None:
    batches: list[list[str]] = []
    gate = asyncio.Event()

    async def emit(events: list[Event]) -> None:
        batches.append([f"{event}:{payload['jobId']}" for event, payload, _, _ in events])
        await gate.wait()

    publisher = EventPublisher(emit)
    user_id = uuid.uuid4().hex[:24]
    jobs = [make_job(user_id) for _ in range(4)]
    try:
        await publisher.job_changed(jobs[0])
        await asyncio.sleep(0.05)  # the first batch is in flight, held at the gate
        for job in jobs[1:]:
            await publisher.job_changed(job)
        gate.set()
    finally:
        await asyncio.wait_for(publisher.close(grace=WAIT), WAIT + 1)
    first = [f"job_status:{jobs[0].job_id}", f"job_completed:{jobs[0].job_id}"]
    rest = [f"{e}:{j.job_id}" for j in jobs[1:] for e in ("job_status", "job_completed")]
    assert batches == [first, rest]  # everything that waited went out in one round trip
    assert publisher.sent == 8

    # With spacing (the worker's publisher), a busy publisher sends at most once per
    # spacing: events that come soon after a send wait and go together, even when the
    # send before them is long done.
    spaced: list[list[str]] = []
    sent_at: list[float] = []

    async def quick(events: list[Event]) -> None:
        sent_at.append(asyncio.get_running_loop().time())
        spaced.append([f"{event}:{payload['jobId']}" for event, payload, _, _ in events])

    publisher = EventPublisher(quick, spacing=0.1)
    try:
        await publisher.job_changed(jobs[0])
        await asyncio.sleep(0.02)  # sent at once (idle), and done
        assert spaced == [first]
        for job in jobs[1:]:  # within the spacing of the first send: they wait for it
            await publisher.job_changed(job)
    finally:
        await asyncio.wait_for(publisher.close(grace=WAIT), WAIT + 1)
    assert spaced == [first, rest]
    assert sent_at[1] - sent_at[0] >= 0.1

    # A publisher whose delivery never finishes is stopped within its grace period.
    async def never_returns(events: list[Event]) -> None:
        await asyncio.Event().wait()

    forever = EventPublisher(never_returns)
    await forever.job_changed(make_job(user_id))
    await asyncio.wait_for(forever.close(grace=0.2), WAIT)


# --- expiry -----------------------------------------------------------------------------------


async def test_connection_ends_when_token_expires(
    api: ApiServer,
    settings: Settings,
    client: httpx.AsyncClient,
    listeners: Callable[[], Listener],
) -> None:
    user = await register(client)
    token = mint(settings, user["userId"], expires_in=3)
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    short, lasting = listeners(), listeners()
    await short.connect(api.url, auth={"token": token})
    await lasting.connect(api.url, auth={"token": user["token"]})
    assert short.sio.connected

    try:
        await asyncio.wait_for(short.disconnected.wait(), expires_at - time.time() + WAIT)
    except TimeoutError:
        raise AssertionError("the connection outlived its token") from None
    assert short.disconnected_at is not None and short.disconnected_at >= expires_at - 0.5
    assert short.events("token_expired") == [{"message": "token has expired"}]
    assert not short.sio.connected

    # The other connection of the same user, with a valid token, stays and still receives.
    job = make_job(user["userId"])
    await api.services.notifier.job_changed(job)
    await lasting.wait_for("job_completed", job.job_id)
    assert lasting.sio.connected and not lasting.disconnected.is_set()
    assert short.events("job_completed", job.job_id) == []


# --- sync -----------------------------------------------------------------------------------


async def queue_job(client: httpx.AsyncClient, user: dict[str, Any], prompt: str) -> str:
    r = await client.post(
        "/generate-content",
        json={"prompt": prompt, "contentType": "Product Description"},
        headers=user["headers"],
    )
    assert r.status_code == 202, r.text
    return str(r.json()["jobId"])


async def test_sync_returns_own_jobs_changed_since(
    api: ApiServer, client: httpx.AsyncClient, listeners: Callable[[], Listener]
) -> None:
    alice, bob = await register(client), await register(client)
    store = api.services.store
    first = await queue_job(client, alice, "first")
    first_job = await store.jobs.get(first)
    assert first_job is not None
    await asyncio.sleep(0.01)  # distinct millisecond timestamps
    second = await queue_job(client, alice, "second")
    await queue_job(client, bob, "bob's, changed after too")
    second_job = await store.jobs.get(second)
    assert second_job is not None

    listener = listeners()
    await listener.connect(api.url, auth={"token": alice["token"]})
    since_iso = iso_ms(first_job.updated_at)
    since_ms = int(first_job.updated_at.timestamp() * 1000)
    for since in (since_iso, since_ms):
        answer = await listener.sio.call("sync", {"since": since}, timeout=WAIT)
        assert answer["jobs"] == [status_payload(second_job)], since
        assert answer["complete"] is True
        server_time = datetime.fromisoformat(answer["serverTime"].replace("Z", "+00:00"))
        assert server_time >= second_job.updated_at

    everything = await listener.sio.call("sync", {"since": "2000-01-01T00:00:00Z"}, timeout=WAIT)
    assert [j["jobId"] for j in everything["jobs"]] == [first, second]
    assert {j["userId"] for j in everything["jobs"]} == {alice["userId"]}

    later = iso_ms(datetime.now(UTC) + timedelta(minutes=1))
    assert (await listener.sio.call("sync", {"since": later}, timeout=WAIT))["jobs"] == []


@pytest.mark.parametrize(
    "data",
    [{"since": "yesterday"}, {"since": ""}, {"since": True}, {"since": None}, {}, None, [1]],
)
async def test_sync_rejects_bad_since(
    api: ApiServer, client: httpx.AsyncClient, listeners: Callable[[], Listener], data: Any
) -> None:
    user = await register(client)
    listener = listeners()
    await listener.connect(api.url, auth={"token": user["token"]})
    if data is None:
        answer = await listener.sio.call("sync", timeout=WAIT)
    else:
        answer = await listener.sio.call("sync", data, timeout=WAIT)
    assert answer["error"] == "bad_request"
    assert (
        "since must be an ISO 8601 timestamp or milliseconds since the epoch" in (answer["message"])
    )
    assert listener.sio.connected  # a bad request does not cost the connection
