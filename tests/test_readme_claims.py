"""One test per promise of the README's Security and limits section and the smaller
promises elsewhere (title fallback, LLM_PROXY, KEEP_* retention, LLM_PROVIDER=offline,
argon2id), each over the real app on a loopback port, real Redis, the store and the fake
LLM. The README's tables name these tests."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from argon2 import PasswordHasher
from argon2.profiles import RFC_9106_LOW_MEMORY

from smartgen.config import Settings
from smartgen.llm.client import ChatClient
from tests.conftest import ApiServer, register, wait_for_status
from tests.fakellm import FakeLLM, Reply
from tests.test_worker import queue, running_worker

JOB = {"prompt": "limits", "contentType": "Blog Post Outline"}


def changed(settings: Settings, **changes: Any) -> Settings:
    copy = settings.model_copy(update=changes)
    copy.__dict__.pop("redis_connection_url", None)  # a cached derived value
    return copy


# --- errors ---------------------------------------------------------------------------------


async def test_unexpected_error_is_a_500_without_stack_trace_or_detail(
    settings: Settings,
) -> None:
    secret = "sk-or-SECRET-in-an-exception-message"

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"database said: {secret}")

    async with ApiServer(settings) as api, httpx.AsyncClient(base_url=api.url) as client:
        user = await register(client)
        api.services.store.jobs.list_for_user = broken  # an unexpected failure inside
        r = await client.get("/generate-content", headers=user["headers"])
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "error": "internal_error",
        "message": "Internal server error",
        "requestId": r.headers["x-request-id"],
    }
    for leak in ("Traceback", "RuntimeError", secret, 'File "', ".py"):
        assert leak not in r.text


# --- CORS -----------------------------------------------------------------------------------


async def test_cors_allows_configured_origins_only_and_answers_preflight(
    settings: Settings,
) -> None:
    allowed, other = "https://app.example.com", "https://evil.example.net"
    s = changed(settings, cors_origins=[allowed])
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url) as client:
        user = await register(client)
        r = await client.get("/generate-content", headers={**user["headers"], "Origin": allowed})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == allowed
        assert "Retry-After" in r.headers["access-control-expose-headers"]
        r = await client.get("/generate-content", headers={**user["headers"], "Origin": other})
        assert r.status_code == 200  # the browser, not the server, withholds the answer
        assert "access-control-allow-origin" not in r.headers
        preflight = {
            "Origin": allowed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        r = await client.options("/generate-content", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == allowed
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        for method in ("DELETE", "PATCH"):  # job control from the browser
            r = await client.options(
                "/generate-content/some-job",
                headers={**preflight, "Access-Control-Request-Method": method},
            )
            assert r.status_code == 200, (method, r.text)
            assert method in r.headers["access-control-allow-methods"]
        r = await client.options(
            "/generate-content",
            headers={**preflight, "Access-Control-Request-Headers": "idempotency-key"},
        )
        assert r.status_code == 200, r.text
        r = await client.options("/generate-content", headers={**preflight, "Origin": other})
        assert r.status_code == 400
        assert "access-control-allow-origin" not in r.headers
    # Off unless configured: no CORS headers at all.
    async with ApiServer(settings) as api, httpx.AsyncClient(base_url=api.url) as client:
        r = await client.get("/healthz", headers={"Origin": allowed})
        assert "access-control-allow-origin" not in r.headers
        r = await client.options("/generate-content", headers=preflight)
        assert "access-control-allow-origin" not in r.headers


# --- limits ---------------------------------------------------------------------------------


def from_address(address: str) -> dict[str, str]:
    """The client's address as a proxy on loopback reports it (FORWARDED_ALLOW_IPS)."""
    return {"X-Forwarded-For": address}


async def test_register_and_login_limits_are_per_address(settings: Settings) -> None:
    # The test's client is the proxy on loopback: its X-Forwarded-For names the client.
    s = changed(
        settings,
        register_ip_rate_limit=2,
        login_ip_rate_limit=3,
        login_rate_limit=0,
        trusted_proxies=["127.0.0.1"],
    )
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url) as client:
        one, two = from_address("198.51.100.7"), from_address("203.0.113.9")

        async def signup(headers: dict[str, str], n: int) -> httpx.Response:
            body = {"email": f"u{n}-{id(headers)}@example.com", "password": "correct horse"}
            return await client.post("/auth/register", json=body, headers=headers)

        codes = [(await signup(one, n)).status_code for n in range(3)]
        assert codes == [201, 201, 429]
        refused = await signup(one, 9)
        assert refused.json()["error"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await signup(two, 0)).status_code == 201  # another address: its own allowance

        login = {"email": f"u0-{id(one)}@example.com", "password": "wrong password"}
        codes = [
            (await client.post("/auth/login", json=login, headers=one)).status_code
            for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]
        r = await client.post("/auth/login", json=login, headers=two)
        assert r.status_code == 401  # the same account from another address: not limited


async def test_zero_turns_each_limit_off(settings: Settings) -> None:
    """Past every default (30 sign-ups per address, 10 logins per email, 60 jobs per minute,
    100 unfinished jobs), with each limit set to 0: nothing is refused."""
    s = changed(
        settings,
        register_ip_rate_limit=0,
        login_rate_limit=0,
        login_ip_rate_limit=0,
        generate_rate_limit=0,
        max_unfinished_jobs=0,
        generation_delay_seconds=600.0,
    )
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        # One after another: concurrent password hashing is bounded on its own
        # (PASSWORD_HASH_CONCURRENCY), and that is not what this test is about.
        users = [await register(client) for _ in range(31)]
        wrong = {"email": users[0]["email"], "password": "wrong password"}
        logins = [await client.post("/auth/login", json=wrong) for _ in range(11)]
        assert [r.status_code for r in logins] == [401] * 11
        posts = await asyncio.gather(
            *(
                client.post("/generate-content", json=JOB, headers=users[0]["headers"])
                for _ in range(101)
            )
        )
        assert [r.status_code for r in posts] == [202] * 101
        listed = await client.get(
            "/generate-content", params={"limit": 200}, headers=users[0]["headers"]
        )
        assert len(listed.json()) == 101


# --- passwords ------------------------------------------------------------------------------


async def test_passwords_are_stored_as_argon2id_with_rfc_9106_parameters(
    settings: Settings,
) -> None:
    async with ApiServer(settings) as api, httpx.AsyncClient(base_url=api.url) as client:
        user = await register(client)
        stored = await api.services.store.users.get_by_email(user["email"])
    assert stored is not None
    encoded = stored.password_hash
    assert "correct horse" not in encoded
    match = re.fullmatch(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[^$]+\$[^$]+", encoded)
    assert match, encoded
    memory, time_cost, lanes = (int(g) for g in match.groups())
    profile = RFC_9106_LOW_MEMORY  # argon2-cffi's default: RFC 9106's second recommendation
    assert (memory, time_cost, lanes) == (
        profile.memory_cost,
        profile.time_cost,
        profile.parallelism,
    )
    assert PasswordHasher().verify(encoded, "correct horse")


# --- saving ---------------------------------------------------------------------------------


async def test_saved_title_falls_back_to_the_prompt_without_a_heading(
    client: httpx.AsyncClient, settings: Settings, fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[plain-{unique}]"
    fake_llm.always(marker, Reply(content="Plain text, no **heading** at all.\n\nMore."))
    user = await register(client)
    prompt = f"Bread for *beginners* {marker}\nsecond line"
    async with running_worker(settings):
        queued = await queue(client, user["headers"], prompt, "Social Media Caption")
        await wait_for_status(client, queued["jobId"], user["headers"], {"completed"})
    r = await client.post(f"/generate-content/{queued['jobId']}/save", headers=user["headers"])
    assert r.status_code == 201, r.text
    # The prompt's first line, its inline markup dropped.
    assert r.json()["title"] == f"Bread for beginners {marker}"


# --- the model provider ---------------------------------------------------------------------


class RecordingProxy:
    """A real forwarding HTTP proxy on loopback (absolute-form requests, as clients send
    them to a proxy for http:// targets); it records each request line it forwards."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode()
            self.requests.append(request_line)
            target = urlsplit(request_line.split(" ")[1])
            up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
            up_writer.write(head)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                with contextlib.suppress(ConnectionError, OSError):
                    dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[RecordingProxy]:
    async with RecordingProxy() as p:
        yield p


async def test_llm_proxy_carries_model_calls(
    settings: Settings, fake_llm: FakeLLM, proxy: RecordingProxy, unique: str
) -> None:
    marker = f"[proxied-{unique}]"
    messages = [{"role": "user", "content": f"Write about bread {marker}"}]
    client = ChatClient(changed(settings, llm_proxy=proxy.url))
    try:
        completion = await client.complete(messages)
    finally:
        await client.close()
    assert completion.content.startswith(f"# Outline: Write about bread {marker}")
    assert proxy.requests == [f"POST {fake_llm.base_url}/chat/completions HTTP/1.1"]
    [call] = fake_llm.calls_for(marker)
    assert call.headers["authorization"] == "Bearer sk-or-test-key"
    # Without LLM_PROXY the proxy sees nothing (and HTTP(S)_PROXY is not read).
    direct = ChatClient(settings)
    try:
        await direct.complete([{"role": "user", "content": f"again {marker}"}])
    finally:
        await direct.close()
    assert len(proxy.requests) == 1
    assert len(fake_llm.calls_for(marker)) == 2


async def test_llm_provider_offline_never_calls_the_provider(
    settings: Settings, fake_llm: FakeLLM, unique: str
) -> None:
    """A key and a base URL are configured, yet `offline` writes drafts locally."""
    s = changed(settings, llm_provider="offline", generation_delay_seconds=0.0)
    marker = f"[offline-{unique}]"
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url) as client:
        user = await register(client)
        async with running_worker(s):
            queued = await queue(client, user["headers"], f"Sourdough {marker}")
            job = await wait_for_status(client, queued["jobId"], user["headers"], {"completed"})
    assert job["model"] == "offline/smartgen-draft"
    assert job["generatedContent"].strip()
    assert fake_llm.calls_for(marker) == []


# --- queue retention ------------------------------------------------------------------------


@pytest.mark.parametrize("fetch_next", [True, False], ids=["fetch-next", "stock-worker"])
async def test_keep_settings_bound_the_queue_not_the_store(
    settings: Settings, fake_llm: FakeLLM, unique: str, fetch_next: bool
) -> None:
    s = changed(
        settings,
        keep_completed_jobs=2,
        keep_failed_jobs=1,
        job_attempts=1,
        generation_delay_seconds=0.0,
        worker_fetch_next=fetch_next,
    )
    ok, bad = f"[kept-{unique}]", f"[dropped-{unique}]"
    fake_llm.always(bad, Reply(status=400))
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        user = await register(client)
        async with running_worker(s):
            jobs = [await queue(client, user["headers"], f"p{i} {ok}") for i in range(4)]
            jobs += [await queue(client, user["headers"], f"f{i} {bad}") for i in range(3)]
            for job in jobs:
                await wait_for_status(
                    client, job["jobId"], user["headers"], {"completed", "failed"}
                )
        redis = api.services.redis
        key = f"{s.queue_prefix}:{s.queue_name}"
        completed = await redis.zrange(f"{key}:completed", 0, -1)
        failed = await redis.zrange(f"{key}:failed", 0, -1)
        listed = (await client.get("/generate-content", headers=user["headers"])).json()

    def ids(members: list[Any]) -> set[str]:
        return {m.decode() if isinstance(m, bytes) else m for m in members}

    # The most recent ones stay in the queue's sets; older ones are removed from Redis.
    assert len(completed) == 2 and len(failed) == 1, (completed, failed)
    assert ids(completed) <= {j["jobId"] for j in jobs[:4]}
    assert ids(failed) <= {j["jobId"] for j in jobs[4:]}
    # The store keeps every job.
    assert sorted(j["status"] for j in listed) == ["completed"] * 4 + ["failed"] * 3
