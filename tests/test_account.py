"""Account features (issue 21): logout and revocation across API processes, sockets and
event streams of a revoked session, password change, account deletion and export, each
error status, two users kept apart."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import jwt
import pytest
import socketio
from bson import ObjectId

from smartgen.config import Settings
from smartgen.errors import Unauthorized
from smartgen.models import Completion
from tests.conftest import JWT_SECRET, ApiServer, register

WAIT = 10.0


async def until(check: Any, what: str) -> None:
    """Wait for `check()` (async) to hold; fail after WAIT seconds saying `what`."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.02)


async def login(client: httpx.AsyncClient, email: str, password: str = "correct horse") -> str:
    r = await client.post("/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_logout_ends_only_this_session(client: httpx.AsyncClient) -> None:
    user = await register(client)
    other_session = await login(client, user["email"])
    r = await client.post("/auth/logout", headers=user["headers"])
    assert r.status_code == 204, r.text
    r = await client.get("/auth/me", headers=user["headers"])
    assert r.status_code == 401
    assert r.json()["error"] == "token_revoked"
    assert (await client.post("/auth/logout", headers=user["headers"])).status_code == 401
    assert (await client.get("/auth/me", headers=bearer(other_session))).status_code == 200
    assert (await client.post("/auth/logout")).status_code == 401


async def test_a_revocation_reaches_another_api_process_at_once(settings: Settings) -> None:
    # Caches that would hold for an hour: only the pub/sub message can tell the second
    # process in time.
    slow = settings.model_copy(
        update={"revocation_refresh_seconds": 3600.0, "user_check_cache_seconds": 300.0}
    )
    async with (
        ApiServer(slow) as first,
        ApiServer(slow) as second,
        httpx.AsyncClient(base_url=first.url) as one,
        httpx.AsyncClient(base_url=second.url) as two,
    ):
        await until(
            lambda: _true(second.services.sessions.subscribed.is_set()), "second subscribed"
        )
        user = await register(one)
        kept = await login(one, user["email"])
        for token in (user["token"], kept):  # both known (cached) by the second process
            assert (await two.get("/auth/me", headers=bearer(token))).status_code == 200
        assert (await one.post("/auth/logout", headers=user["headers"])).status_code == 204

        async def refused() -> bool:
            return (await two.get("/auth/me", headers=user["headers"])).status_code == 401

        await until(refused, "the second process refuses the logged-out token")
        assert (await two.get("/auth/me", headers=bearer(kept))).status_code == 200

        # A password change ends every session issued before it, everywhere.
        r = await one.post(
            "/auth/password",
            json={"currentPassword": "correct horse", "newPassword": "a new password"},
            headers=bearer(kept),
        )
        assert r.status_code == 200, r.text
        fresh = r.json()["token"]

        async def kept_refused() -> bool:
            return (await two.get("/auth/me", headers=bearer(kept))).status_code == 401

        await until(kept_refused, "the second process refuses the older session")
        assert (await two.get("/auth/me", headers=bearer(fresh))).status_code == 200


async def _true(value: bool) -> bool:
    return value


async def test_a_revoked_session_loses_its_socket_and_event_stream(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    user = await register(client)
    other = await login(client, user["email"])
    ended: list[Any] = []
    gone = asyncio.Event()
    sio = socketio.AsyncClient(reconnection=False)
    sio.on("session_ended", lambda data: ended.append(data))
    sio.on("disconnect", lambda *_: gone.set())
    await sio.connect(api.url, auth={"token": user["token"]}, transports=["websocket"])
    survivor = socketio.AsyncClient(reconnection=False)
    await survivor.connect(api.url, auth={"token": other}, transports=["websocket"])

    frames: list[str] = []

    async def stream() -> None:
        async with client.stream("GET", "/events", headers=user["headers"]) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                frames.append(line)

    reader = asyncio.create_task(stream())
    await until(lambda: _true(": connected" in frames), "the stream is open")
    assert (await client.post("/auth/logout", headers=user["headers"])).status_code == 204
    await asyncio.wait_for(gone.wait(), WAIT)
    await asyncio.wait_for(reader, WAIT)  # the stream ended
    assert "event: session_ended" in frames
    assert survivor.connected  # the other session's socket stays
    await survivor.disconnect()
    # A revoked token cannot connect again.
    again = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await again.connect(api.url, auth={"token": user["token"]}, transports=["websocket"])
    r = await client.get("/events", headers=user["headers"])
    assert r.status_code == 401


async def test_password_change(client: httpx.AsyncClient) -> None:
    user = await register(client)
    other = await register(client)
    url = "/auth/password"
    r = await client.post(
        url, json={"currentPassword": "wrong one", "newPassword": "a new password"},
        headers=user["headers"],
    )  # fmt: skip
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_credentials"
    r = await client.post(
        url, json={"currentPassword": "correct horse", "newPassword": "short"},
        headers=user["headers"],
    )  # fmt: skip
    assert r.status_code == 422
    r = await client.post(url, json={"newPassword": "a new password"}, headers=user["headers"])
    assert r.status_code == 422
    r = await client.post(
        url, content=b"{", headers={**user["headers"], "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    r = await client.post(url, json={"currentPassword": "correct horse", "newPassword": "x" * 9})
    assert r.status_code == 401
    r = await client.post(
        url, json={"currentPassword": "correct horse", "newPassword": "a new password"},
        headers=user["headers"],
    )  # fmt: skip
    assert r.status_code == 200, r.text
    fresh = r.json()["token"]
    assert r.json()["user"]["id"] == user["userId"]
    assert (await client.get("/auth/me", headers=user["headers"])).status_code == 401
    assert (await client.get("/auth/me", headers=bearer(fresh))).status_code == 200
    r = await client.post("/auth/login", json={"email": user["email"], "password": "correct horse"})
    assert r.status_code == 401
    # A login right after the change (within the same second) is a valid session.
    again = await login(client, user["email"], "a new password")
    assert (await client.get("/auth/me", headers=bearer(again))).status_code == 200
    # The other user is untouched.
    assert (await client.get("/auth/me", headers=other["headers"])).status_code == 200
    await login(client, other["email"])


async def _completed_job(api: ApiServer, client: httpx.AsyncClient, user: dict[str, Any]) -> str:
    from smartgen.kit.times import utcnow

    r = await client.post(
        "/generate-content",
        json={"prompt": f"done {uuid.uuid4()}", "contentType": "Blog Post Outline"},
        headers=user["headers"],
    )
    job_id = str(r.json()["jobId"])
    store = api.services.store
    assert await store.jobs.mark_processing(job_id, at=utcnow(), attempt=1)
    done = Completion(content="# Mine\n\ntext", model="m")
    assert await store.jobs.mark_completed(job_id, result=done, at=utcnow())
    return job_id


async def test_export_holds_the_callers_data_only(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    alice, bob = await register(client), await register(client)
    done = await _completed_job(api, client, alice)
    assert (
        await client.post(f"/generate-content/{done}/save", headers=alice["headers"])
    ).status_code == 201
    r = await client.post(
        "/generate-content",
        json={"prompt": "later", "contentType": "Product Description", "delaySeconds": 3600},
        headers=alice["headers"],
    )
    queued = r.json()["jobId"]
    bobs = await _completed_job(api, client, bob)
    voice = {"name": "Crisp", "description": "short sentences", "examples": ["Bake it."]}
    r = await client.post("/voices", json=voice, headers=alice["headers"])
    assert r.status_code == 201, r.text
    voice_id = r.json()["voiceId"]

    r = await client.get("/auth/me/export", headers=alice["headers"])
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["cache-control"] == "no-store"
    document = r.json()
    assert document["user"]["id"] == alice["userId"]
    assert document["user"]["email"] == alice["email"]
    assert "password" not in r.text and "argon2" not in r.text
    assert sorted(j["jobId"] for j in document["jobs"]) == sorted([done, queued])
    assert [c["jobId"] for c in document["contents"]] == [done]
    assert [v["voiceId"] for v in document["voices"]] == [voice_id]
    assert bobs not in r.text
    assert (await client.get("/auth/me/export")).status_code == 401
    r = await client.get("/auth/me/export", headers=bob["headers"])
    assert [j["jobId"] for j in r.json()["jobs"]] == [bobs]
    assert r.json()["contents"] == [] and r.json()["voices"] == []


async def test_export_of_many_jobs_is_streamed_whole(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    from smartgen.kit.times import utcnow
    from smartgen.models import Job, JobStatus

    user = await register(client)
    now = utcnow()
    ids = [str(uuid.uuid4()) for _ in range(450)]  # more than two store pages
    for job_id in ids:
        await api.services.store.jobs.create(
            Job(job_id=job_id, user_id=user["userId"], status=JobStatus.queued,
                prompt="p", content_type="Blog Post Outline", scheduled_for=now,
                created_at=now, updated_at=now)
        )  # fmt: skip
    r = await client.get("/auth/me/export", headers=user["headers"])
    assert r.status_code == 200
    assert "content-length" not in r.headers  # streamed
    assert sorted(j["jobId"] for j in json.loads(r.content)["jobs"]) == sorted(ids)


async def test_delete_account_removes_everything_it_owns(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    alice, bob = await register(client), await register(client)
    done = await _completed_job(api, client, alice)
    r = await client.post(f"/generate-content/{done}/save", headers=alice["headers"])
    content_id = r.json()["contentId"]
    r = await client.post(
        "/generate-content",
        json={"prompt": "never run", "contentType": "Blog Post Outline", "delaySeconds": 3600},
        headers=alice["headers"],
    )
    queued = r.json()["jobId"]
    assert await api.services.queue.state(queued) == "delayed"
    bobs = await _completed_job(api, client, bob)
    r = await client.post(f"/generate-content/{bobs}/save", headers=bob["headers"])
    bobs_content = r.json()["contentId"]
    voice = {"name": "Crisp", "description": "short sentences", "examples": ["Bake it."]}
    alices_voice = (await client.post("/voices", json=voice, headers=alice["headers"])).json()
    bobs_voice = (await client.post("/voices", json=voice, headers=bob["headers"])).json()

    # Each refusal first: no token, wrong password, no body, not JSON.
    assert (
        await client.request("DELETE", "/auth/me", json={"password": "correct horse"})
    ).status_code == 401
    r = await client.request(
        "DELETE", "/auth/me", json={"password": "wrong"}, headers=alice["headers"]
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_credentials"
    r = await client.request("DELETE", "/auth/me", headers=alice["headers"])
    assert r.status_code in (400, 422)
    r = await client.request("DELETE", "/auth/me", json={"pass": "x"}, headers=alice["headers"])
    assert r.status_code == 422
    assert (await client.get("/auth/me", headers=alice["headers"])).status_code == 200

    r = await client.request(
        "DELETE", "/auth/me", json={"password": "correct horse"}, headers=alice["headers"]
    )
    assert r.status_code == 204, r.text
    store = api.services.store
    assert await store.users.get(alice["userId"]) is None
    assert await store.jobs.get(done) is None and await store.jobs.get(queued) is None
    assert await store.contents.get_for_user(content_id, alice["userId"]) is None
    assert await store.voices.get_for_user(alices_voice["voiceId"], alice["userId"]) is None
    assert await store.voices.get_for_user(bobs_voice["voiceId"], bob["userId"]) is not None
    assert await api.services.queue.state(queued) in ("unknown", "removed")
    assert await api.services.log.last_seq(alice["userId"]) == 0  # its event log is gone
    assert await api.services.log.last_seq(bob["userId"]) > 0
    # Its tokens are refused, its login too; the email can be used again.
    assert (await client.get("/auth/me", headers=alice["headers"])).status_code == 401
    r = await client.post(
        "/generate-content",
        json={"prompt": "x", "contentType": "Blog Post Outline"},
        headers=alice["headers"],
    )
    assert r.status_code == 401
    r = await client.post(
        "/auth/login", json={"email": alice["email"], "password": "correct horse"}
    )
    assert r.status_code == 401
    await register(client, alice["email"])
    # Bob's account and data are untouched.
    assert (await client.get("/auth/me", headers=bob["headers"])).status_code == 200
    assert (
        await client.get(f"/generate-content/{bobs}", headers=bob["headers"])
    ).status_code == 200
    assert (
        await client.get(f"/contents/{bobs_content}", headers=bob["headers"])
    ).status_code == 200


async def test_a_token_of_a_user_that_does_not_exist_is_refused(client: httpx.AsyncClient) -> None:
    import time

    now = int(time.time())
    for sub in (str(ObjectId()), "u1"):
        token = jwt.encode(
            {"sub": sub, "iat": now, "exp": now + 600}, JWT_SECRET, algorithm="HS256"
        )
        r = await client.post(
            "/generate-content",
            json={"prompt": "orphan", "contentType": "Blog Post Outline"},
            headers=bearer(token),
        )
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "invalid_token"
        assert (await client.get("/generate-content", headers=bearer(token))).status_code == 401


async def test_logout_of_a_token_without_jti_ends_all_of_the_users_sessions(
    client: httpx.AsyncClient,
) -> None:
    import time

    user = await register(client)
    now = int(time.time())
    # As an existing Node app mints them: no jti.
    node = jwt.encode(
        {"id": user["userId"], "iat": now - 1, "exp": now + 600}, JWT_SECRET, algorithm="HS256"
    )
    assert (await client.get("/auth/me", headers=bearer(node))).status_code == 200
    assert (await client.post("/auth/logout", headers=bearer(node))).status_code == 204
    assert (await client.get("/auth/me", headers=bearer(node))).status_code == 401
    assert (await client.get("/auth/me", headers=user["headers"])).status_code == 401
    fresh = await login(client, user["email"])
    assert (await client.get("/auth/me", headers=bearer(fresh))).status_code == 200


async def test_password_checks_are_rate_limited_per_user(settings: Settings) -> None:
    limited = settings.model_copy(update={"login_rate_limit": 2})
    async with ApiServer(limited) as api, httpx.AsyncClient(base_url=api.url) as client:
        user, other = await register(client), await register(client)
        wrong = {"currentPassword": "nope", "newPassword": "a new password"}
        codes = [
            (await client.post("/auth/password", json=wrong, headers=user["headers"])).status_code
            for _ in range(3)
        ]
        assert codes == [401, 401, 429]
        r = await client.request(
            "DELETE", "/auth/me", json={"password": "correct horse"}, headers=user["headers"]
        )
        assert r.status_code == 429  # the same budget: guessing through either is bounded
        assert (await client.get("/auth/me", headers=user["headers"])).status_code == 200
        r = await client.post("/auth/password", json=wrong, headers=other["headers"])
        assert r.status_code == 401  # another user's budget is their own


async def test_without_redis_a_logout_is_a_clear_503_and_tokens_still_work(
    settings: Settings,
) -> None:
    from tests.conftest import RedisServer

    redis = RedisServer()
    try:
        own = settings.model_copy(update={"redis_url": redis.url})
        async with ApiServer(own) as api, httpx.AsyncClient(base_url=api.url) as client:
            user = await register(client)
            assert (await client.get("/auth/me", headers=user["headers"])).status_code == 200
            redis.stop()
            r = await client.post("/auth/logout", headers=user["headers"])
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "sessions_unavailable"
            r = await client.post(
                "/auth/password",
                json={"currentPassword": "correct horse", "newPassword": "a new password"},
                headers=user["headers"],
            )
            assert r.status_code == 503
            # Nothing changed: the old password still logs in once Redis is back.
            assert (await client.get("/auth/me", headers=user["headers"])).status_code == 200
            redis.start()
            await login(client, user["email"])
    finally:
        redis.close()


async def test_requests_of_one_session_arriving_together_share_one_check(
    api: ApiServer, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await register(client)
    token = await login(client, user["email"])  # a session this process has not checked yet
    store = api.services.store
    real_get = store.users.get
    reads: list[str] = []

    async def counted(user_id: str) -> Any:
        reads.append(user_id)
        return await real_get(user_id)

    monkeypatch.setattr(store.users, "get", counted)
    api.services.sessions._users.clear()  # the user's existence is read again
    answers = await asyncio.gather(
        *(client.get("/generate-content", headers=bearer(token)) for _ in range(20))
    )
    assert {r.status_code for r in answers} == {200}
    assert reads.count(user["userId"]) == 1


async def test_a_revocation_during_a_check_is_not_overwritten_by_the_check(
    api: ApiServer, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await register(client)
    guard = api.services.sessions
    principal = api.services.tokens.verify(user["token"])
    store = api.services.store
    real_get = store.users.get
    reading, release = asyncio.Event(), asyncio.Event()

    async def held(user_id: str) -> Any:  # the real read, held until the revocation is in
        reading.set()
        await release.wait()
        return await real_get(user_id)

    monkeypatch.setattr(store.users, "get", held)
    guard._users.clear()
    guard._tokens.clear()
    check = asyncio.create_task(guard.check(principal))
    await asyncio.wait_for(reading.wait(), WAIT)
    # Another process logs this session out now: its message arrives mid-read.
    guard._apply(f"t {principal.user_id} {principal.token_id}".encode())
    release.set()
    with pytest.raises(Unauthorized):
        await check
    with pytest.raises(Unauthorized):  # and it stays refused
        await guard.check(principal)


async def test_exports_are_rate_limited(settings: Settings) -> None:
    limited = settings.model_copy(update={"save_rate_limit": 2})
    async with ApiServer(limited) as api, httpx.AsyncClient(base_url=api.url) as client:
        user, other = await register(client), await register(client)
        codes = [
            (await client.get("/auth/me/export", headers=user["headers"])).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        assert (await client.get("/auth/me/export", headers=other["headers"])).status_code == 200
