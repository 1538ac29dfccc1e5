"""Hostile input: body size, content type, rate limits shared by every API process."""

from __future__ import annotations

import httpx

from smartgen.config import Settings
from tests.conftest import ApiServer, register

JOB = {"prompt": "limits", "contentType": "Blog Post Outline"}


async def test_body_too_large_is_413(client: httpx.AsyncClient) -> None:
    user = await register(client)
    big = {"prompt": "x" * 300_000, "contentType": "Blog Post Outline"}
    r = await client.post("/generate-content", json=big, headers=user["headers"])
    assert r.status_code == 413
    assert r.json() == {
        "error": "payload_too_large",
        "message": "Request body is larger than 262144 bytes",
    }

    async def chunks():  # no Content-Length: the limit holds for streamed bodies too
        for _ in range(40):
            yield b"x" * 8192

    r = await client.post(
        "/generate-content",
        content=chunks(),
        headers={**user["headers"], "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    # Nothing was stored.
    assert (await client.get("/generate-content", headers=user["headers"])).json() == []


async def test_non_json_content_type_is_415(client: httpx.AsyncClient) -> None:
    user = await register(client)
    r = await client.post(
        "/generate-content",
        content=b"prompt=x&contentType=Blog",
        headers={**user["headers"], "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415
    assert r.json()["error"] == "unsupported_media_type"
    r = await client.post(
        "/generate-content",
        content=b'{"prompt": "x", "contentType": "Blog Post Outline"}',
        headers={**user["headers"], "Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 202


async def test_generate_rate_limit_is_per_user_and_shared_across_processes(
    settings: Settings,
) -> None:
    s = settings.model_copy(update={"generate_rate_limit": 3, "generate_rate_window_seconds": 30})
    async with (
        ApiServer(s) as one,
        ApiServer(s) as two,
        httpx.AsyncClient(base_url=one.url) as c1,
        httpx.AsyncClient(base_url=two.url) as c2,
    ):
        alice, bob = await register(c1), await register(c1)
        codes = []
        for client in (c1, c2, c1, c2):
            r = await client.post("/generate-content", json=JOB, headers=alice["headers"])
            codes.append(r.status_code)
        assert codes == [202, 202, 202, 429]
        assert r.json()["error"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 30
        assert "at most 3 per 30 s" in r.json()["message"]
        # Bob has his own allowance; Alice's refused request queued nothing.
        assert (
            await c2.post("/generate-content", json=JOB, headers=bob["headers"])
        ).status_code == 202
        assert len((await c1.get("/generate-content", headers=alice["headers"])).json()) == 3


async def test_login_attempts_are_limited(settings: Settings) -> None:
    s = settings.model_copy(update={"login_rate_limit": 3})
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url) as client:
        user = await register(client)
        wrong = {"email": user["email"], "password": "wrong password"}
        assert [(await client.post("/auth/login", json=wrong)).status_code for _ in range(3)] == [
            401
        ] * 3
        r = await client.post(
            "/auth/login", json={"email": user["email"], "password": "correct horse"}
        )
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        # Another account is not locked out by these attempts.
        other = await register(client)
        r = await client.post(
            "/auth/login", json={"email": other["email"], "password": "correct horse"}
        )
        assert r.status_code == 200


async def test_cap_on_unfinished_jobs(settings: Settings) -> None:
    s = settings.model_copy(update={"max_unfinished_jobs": 2, "generation_delay_seconds": 60.0})
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url) as client:
        alice, bob = await register(client), await register(client)
        codes = [
            (await client.post("/generate-content", json=JOB, headers=alice["headers"])).status_code
            for _ in range(3)
        ]
        assert codes == [202, 202, 429]
        r = await client.post("/generate-content", json=JOB, headers=alice["headers"])
        assert r.json()["error"] == "too_many_unfinished_jobs"
        assert "at most 2" in r.json()["message"]
        assert (
            await client.post("/generate-content", json=JOB, headers=bob["headers"])
        ).status_code == 202
