"""Hostile input: body size, content type, rate limits shared by every API process."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from smartgen.api.ratelimit import Limit, RateLimiter
from smartgen.config import Settings
from smartgen.errors import ServiceUnavailable, TooManyRequests
from tests.conftest import (
    ApiServer,
    Process,
    RedisServer,
    free_port,
    register,
    wait_for_status,
    wait_http,
)

JOB = {"prompt": "limits", "contentType": "Blog Post Outline"}


async def test_body_too_large_is_413(client: httpx.AsyncClient) -> None:
    user = await register(client)
    big = {"prompt": "x" * 300_000, "contentType": "Blog Post Outline"}
    r = await client.post("/generate-content", json=big, headers=user["headers"])
    assert r.status_code == 413
    assert r.json() == {
        "error": "payload_too_large",
        "message": "Request body is larger than 262144 bytes",
        "requestId": r.headers["x-request-id"],
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
    env: dict[str, str], processes: list[Process]
) -> None:
    """Two real `smartgen api` processes on one Redis: one allowance per user between them."""
    limited = {**env, "GENERATE_RATE_LIMIT": "3", "GENERATE_RATE_WINDOW_SECONDS": "30"}
    urls = []
    for _ in range(2):
        port = free_port()
        proc = Process("api", limited, PORT=str(port))
        processes.append(proc)
        urls.append(f"http://127.0.0.1:{port}")
        await wait_http(urls[-1], proc)
    async with (
        httpx.AsyncClient(base_url=urls[0]) as c1,
        httpx.AsyncClient(base_url=urls[1]) as c2,
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
        # A retried job is unfinished again: at the cap, a retry is refused as a new job
        # is; with a place free, it goes in.
        listed = (await client.get("/generate-content", headers=alice["headers"])).json()
        first, second = (j["jobId"] for j in listed)
        r = await client.delete(f"/generate-content/{first}", headers=alice["headers"])
        assert r.status_code == 200, r.text
        assert (
            await client.post("/generate-content", json=JOB, headers=alice["headers"])
        ).status_code == 202
        r = await client.post(f"/generate-content/{first}/retry", headers=alice["headers"])
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "too_many_unfinished_jobs"
        assert "at most 2" in r.json()["message"] and int(r.headers["Retry-After"]) >= 1
        shown = (await client.get(f"/generate-content/{first}", headers=alice["headers"])).json()
        assert shown["status"] == "cancelled"
        r = await client.delete(f"/generate-content/{second}", headers=alice["headers"])
        assert r.status_code == 200, r.text
        r = await client.post(f"/generate-content/{first}/retry", headers=alice["headers"])
        assert r.status_code == 202, r.text


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"], indirect=True)
async def test_cap_holds_for_parallel_submits_across_processes(
    env: dict[str, str], processes: list[Process]
) -> None:
    """Parallel POST /generate-content of one user through two real API processes, on the
    SQL stores: exactly MAX_UNFINISHED_JOBS answered 202, the rest 429 too_many_unfinished_jobs;
    another user is not held back; a cancelled and a finished job free their places, and
    exactly that many of the next burst get in."""
    capped = {
        **env,
        "MAX_UNFINISHED_JOBS": "3",
        # Jobs stay queued for the whole test, however slow the machine, unless run now.
        "GENERATION_DELAY_SECONDS": "3600",
        # The rate limits out of reach: only the cap refuses here.
        "GENERATE_RATE_LIMIT": "10000",
        "GENERATE_IP_RATE_LIMIT": "10000",
    }
    urls = []
    for _ in range(2):
        port = free_port()
        proc = Process("api", capped, PORT=str(port))
        processes.append(proc)
        urls.append(f"http://127.0.0.1:{port}")
    for url, proc in zip(urls, processes, strict=True):
        await wait_http(url, proc)
    processes.append(Process("worker", capped))
    async with (
        httpx.AsyncClient(base_url=urls[0], timeout=30) as c1,
        httpx.AsyncClient(base_url=urls[1], timeout=30) as c2,
    ):
        alice, bob = await register(c1), await register(c2)

        async def burst(n: int) -> tuple[list[httpx.Response], list[int]]:
            calls = [
                (c1, c2)[i % 2].post("/generate-content", json=JOB, headers=alice["headers"])
                for i in range(n)
            ]
            calls += [c2.post("/generate-content", json=JOB, headers=bob["headers"])]
            answers = await asyncio.gather(*calls)
            return list(answers[:n]), [answers[n].status_code]

        answers, bobs = await burst(24)
        codes = sorted(r.status_code for r in answers)
        assert codes == [202] * 3 + [429] * 21
        assert bobs == [202]
        refused = [r for r in answers if r.status_code == 429]
        assert {r.json()["error"] for r in refused} == {"too_many_unfinished_jobs"}
        assert all("at most 3" in r.json()["message"] for r in refused)
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        listed = (await c1.get("/generate-content", headers=alice["headers"])).json()
        assert sorted(j["jobId"] for j in listed) == sorted(
            r.json()["jobId"] for r in answers if r.status_code == 202
        )
        # One cancelled, one run now and finished: two places free.
        first, second = listed[0]["jobId"], listed[1]["jobId"]
        r = await c2.delete(f"/generate-content/{first}", headers=alice["headers"])
        assert r.status_code == 200, r.text
        r = await c1.post(f"/generate-content/{second}/run-now", headers=alice["headers"])
        assert r.status_code == 200, r.text
        await wait_for_status(c1, second, alice["headers"], {"completed"}, timeout=90)
        answers, bobs = await burst(24)
        assert sorted(r.status_code for r in answers) == [202] * 2 + [429] * 22
        assert bobs == [202]
        listed = (await c2.get("/generate-content", headers=alice["headers"])).json()
        unfinished = [j for j in listed if j["status"] in ("queued", "processing")]
        assert len(listed) == 5
        assert len(unfinished) == 3


async def test_concurrent_hits_share_script_calls_and_count_as_one_by_one(
    redis_server: RedisServer, unique: str
) -> None:
    """A burst of hits goes to Redis in a few script calls, yet every hit is counted in
    order: exactly `limit` pass per key, whichever batch each landed in, and each key keeps
    its own window."""
    client = aioredis.Redis.from_url(redis_server.url)
    limiter = RateLimiter(client, prefix=f"t{unique}:rl")
    outcomes: dict[str, list[int]] = {"alice": [], "bob": []}

    async def one(user: str) -> None:
        try:
            await limiter.hit("generate", user, limit=5, window_seconds=30, fail_open=False)
            outcomes[user].append(202)
        except TooManyRequests as exc:
            assert 1 <= int(exc.headers["Retry-After"]) <= 30
            outcomes[user].append(429)

    try:
        await asyncio.gather(*(one("alice" if i % 3 else "bob") for i in range(60)))
        assert outcomes["alice"].count(202) == 5 and outcomes["alice"].count(429) == 35
        assert outcomes["bob"].count(202) == 5 and outcomes["bob"].count(429) == 15
        assert limiter.hits.items == 60
        assert limiter.hits.flushes < 10  # batched: far fewer script calls than hits
        counts = [int(await client.get(f"t{unique}:rl:generate:{u}")) for u in ("alice", "bob")]
        assert counts == [40, 20]
        ttl = await client.pttl(f"t{unique}:rl:generate:alice")
        assert 0 < ttl <= 30_000
        # Different windows in one batch: each key keeps its own.
        await asyncio.gather(
            limiter.hit("a", "x", limit=9, window_seconds=2, fail_open=False),
            limiter.hit("b", "x", limit=9, window_seconds=60, fail_open=False),
            limiter.hit("a", "y", limit=9, window_seconds=2, fail_open=False),
        )
        assert 0 < await client.pttl(f"t{unique}:rl:a:x") <= 2000
        assert 2000 < await client.pttl(f"t{unique}:rl:b:x") <= 60_000
    finally:
        await client.delete(*[k async for k in client.scan_iter(f"t{unique}:rl:*")])
        await client.aclose()


async def test_a_requests_limits_are_one_round_trip_and_stop_at_the_first_refusal(
    redis_server: RedisServer, unique: str
) -> None:
    """`hit_all` counts a request's limits in order in one script call, as separate hits
    one after another would: the first over its limit refuses, and the later ones are not
    counted (a user over their own limit does not use up their address's)."""
    client = aioredis.Redis.from_url(redis_server.url)
    limiter = RateLimiter(client, prefix=f"t{unique}:rl")

    def limits(user: str) -> list[Limit]:
        return [Limit("u", user, 2, 30), Limit("ip", "addr", 3, 30)]

    async def attempt(user: str) -> str:
        try:
            await limiter.hit_all(limits(user), fail_open=False)
        except TooManyRequests as exc:
            return exc.message
        return "ok"

    try:
        flushes = limiter.hits.flushes
        assert await attempt("alice") == "ok"
        assert limiter.hits.flushes == flushes + 1  # both limits, one script call
        assert await attempt("alice") == "ok"
        refused = await attempt("alice")  # alice's third: her own limit refuses
        assert "at most 2 per 30 s" in refused
        counts = [await client.get(f"t{unique}:rl:{k}") for k in ("u:alice", "ip:addr")]
        assert counts == [b"3", b"2"]  # the address was not counted for the refusal
        assert await attempt("bob") == "ok"  # the address's third
        assert "at most 3 per 30 s" in await attempt("carol")  # the address's fourth
        assert await client.get(f"t{unique}:rl:u:carol") == b"1"
        # Concurrent requests' groups share script calls, each group stopping on its own.
        results = await asyncio.gather(*(attempt(f"d{i % 2}") for i in range(12)))
        # Each user's first two pass their own limit and meet the address's; the rest
        # meet their own and leave the address alone.
        assert sum("at most 3 per 30 s" in r for r in results) == 4
        assert sum("at most 2 per 30 s" in r for r in results) == 8
        assert int(await client.get(f"t{unique}:rl:ip:addr")) == 4 + 4
        # A limit of 0 is off: nothing counted, no round trip.
        flushes = limiter.hits.flushes
        await limiter.hit_all([Limit("off", "x", 0, 30)], fail_open=False)
        assert limiter.hits.flushes == flushes
        assert await client.get(f"t{unique}:rl:off:x") is None
    finally:
        await client.delete(*[k async for k in client.scan_iter(f"t{unique}:rl:*")])
        await client.aclose()


async def test_rate_limiter_without_redis_fails_closed_or_open_for_every_caller(
    unique: str,
) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    limiter = RateLimiter(client, prefix=f"t{unique}:rl")
    try:
        closed = await asyncio.gather(
            *(
                limiter.hit("generate", str(i), limit=5, window_seconds=30, fail_open=False)
                for i in range(8)
            ),
            return_exceptions=True,
        )
        assert all(isinstance(x, ServiceUnavailable) for x in closed), closed
        opened = await asyncio.gather(
            *(
                limiter.hit("login", str(i), limit=5, window_seconds=30, fail_open=True)
                for i in range(8)
            ),
            return_exceptions=True,
        )
        assert opened == [None] * 8
    finally:
        await client.aclose()
