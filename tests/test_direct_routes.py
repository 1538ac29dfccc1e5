"""`POST /generate-content` served without FastAPI's per-request layers (`api.direct`):
every answer the same as FastAPI's own, what it does not serve handed to FastAPI before
any dependency ran, and off wherever it would skip something (CORS, overrides)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest

from smartgen.api.app import create_app
from smartgen.api.direct import NotDirect, direct_routes
from smartgen.api.middleware import RequestLimits
from smartgen.config import Settings
from smartgen.generation.router import router as generation_router
from tests.conftest import ApiServer, register


def limits_of(server: ApiServer) -> RequestLimits:
    """The middleware in front of FastAPI, where the direct routes are looked up."""
    limits = server.app.limits
    assert isinstance(limits, RequestLimits)
    return limits


class Counting:
    """FastAPI, counting the requests that reach it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


@pytest.fixture
async def served(
    settings: Settings,
) -> AsyncIterator[tuple[ApiServer, httpx.AsyncClient, Counting]]:
    async with ApiServer(settings) as server:
        limits = limits_of(server)
        counting = Counting(limits.app)
        limits.app = counting
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield server, client, counting


def comparable(r: httpx.Response) -> tuple[int, Any, list[str], dict[str, str]]:
    """An answer without what differs between two identical requests (ids, times)."""
    try:
        body: Any = r.json()
    except ValueError:
        body = r.text
    if isinstance(body, dict):
        body = {
            k: v
            for k, v in body.items()
            if k not in ("jobId", "requestId", "scheduledFor", "estimatedCompletionTime")
        }
    kept = ("content-type", "retry-after", "cache-control", "allow", "x-content-type-options")
    headers = {k: v for k, v in r.headers.items() if k in kept}
    return r.status_code, body, sorted(r.headers.keys()), headers


async def test_the_busy_route_skips_fastapi_and_answers_as_it_would(
    served: tuple[ApiServer, httpx.AsyncClient, Counting], settings: Settings
) -> None:
    server, client, counting = served
    limits = limits_of(server)
    assert set(limits.direct) == {("POST", "/generate-content")}
    alice = await register(client)
    key = await client.post(
        "/api-keys", json={"name": "reader", "scopes": ["read"]}, headers=alice["headers"]
    )
    assert key.status_code == 201, key.text
    reader = {"Authorization": f"Bearer {key.json()['key']}"}
    ok = {"prompt": "Tea", "contentType": "Blog Post Outline"}
    stranger = jwt.encode(
        {"sub": str(uuid.uuid4()), "exp": int(time.time()) + 600}, "another-secret-" + "y" * 40
    )
    too_long = "x" * (settings.prompt_max_chars + 1)

    # (what to send, whether the direct route answers it itself)
    cases: list[tuple[str, Callable[[str], dict[str, Any]], bool]] = [
        ("valid", lambda _: {"json": ok, "headers": alice["headers"]}, True),
        ("options", lambda _: {"json": {**ok, "tone": "playful", "length": "short"},
                               "headers": alice["headers"]}, True),
        ("delay", lambda _: {"json": {**ok, "delaySeconds": 30},
                             "headers": alice["headers"]}, True),
        ("no token", lambda _: {"json": ok}, True),
        ("wrong secret", lambda _: {"json": ok,
                                    "headers": {"Authorization": f"Bearer {stranger}"}}, True),
        ("key without scope", lambda _: {"json": ok, "headers": reader}, True),
        ("prompt over the setting", lambda _: {"json": {**ok, "prompt": too_long},
                                               "headers": alice["headers"]}, True),
        ("delay too long", lambda _: {"json": {**ok, "delaySeconds": 10**9},
                                      "headers": alice["headers"]}, True),
        ("unknown voice", lambda _: {"json": {**ok, "voiceId": str(uuid.uuid4())},
                                     "headers": alice["headers"]}, True),
        ("idempotent", lambda tag: {"json": ok, "headers": {**alice["headers"],
                                                             "Idempotency-Key": f"k-{tag}"}}, True),
        ("not JSON", lambda _: {"content": b"{not json", "headers": {
            **alice["headers"], "Content-Type": "application/json"}}, False),
        ("too deep", lambda _: {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {
            **alice["headers"], "Content-Type": "application/json"}}, False),
        ("bad UTF-8", lambda _: {"content": b'{"prompt": "\xff"}', "headers": {
            **alice["headers"], "Content-Type": "application/json"}}, False),
        ("empty", lambda _: {"content": b"", "headers": {
            **alice["headers"], "Content-Type": "application/json"}}, False),
        ("a list", lambda _: {"json": [ok], "headers": alice["headers"]}, False),
        ("unknown field", lambda _: {"json": {**ok, "owner": "bob"}, "headers": alice["headers"]},
         False),
        ("bad content type", lambda _: {"json": {**ok, "contentType": "Poem"},
                                        "headers": alice["headers"]}, False),
        ("blank key", lambda _: {"json": ok, "headers": {**alice["headers"],
                                                          "Idempotency-Key": ""}}, False),
        ("long key", lambda _: {"json": ok, "headers": {**alice["headers"],
                                                         "Idempotency-Key": "k" * 256}}, False),
        ("invalid body, no token", lambda _: {"json": {"prompt": ""}}, False),
    ]  # fmt: skip
    saved = dict(limits.direct)
    for name, request, direct in cases:
        answers = []
        for tag, routes in (("direct", saved), ("fastapi", {})):
            limits.direct.clear()
            limits.direct.update(routes)
            counting.paths.clear()
            r = await client.post("/generate-content", **request(tag))
            answers.append(comparable(r))
            reached = counting.paths == ["POST /generate-content"]
            assert reached == (tag == "fastapi" or not direct), (name, tag, counting.paths)
        assert answers[0] == answers[1], name

    # An idempotent repeat is replayed by the direct route as FastAPI would.
    limits.direct.update(saved)
    sent = {"json": ok, "headers": {**alice["headers"], "Idempotency-Key": "again"}}
    first, again = [await client.post("/generate-content", **sent) for _ in range(2)]
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.model_copy(update={"generate_rate_limit": 3})


async def test_what_fastapi_answers_is_counted_once(limited: Settings) -> None:
    """A body the direct route hands to FastAPI has not been counted yet: FastAPI counts
    it once, as it counts every request of this route."""
    async with ApiServer(limited) as server, httpx.AsyncClient(base_url=server.url) as client:
        bob = await register(client)
        invalid = {"json": {"prompt": "Tea"}, "headers": bob["headers"]}
        ok = {
            "json": {"prompt": "Tea", "contentType": "Blog Post Outline"},
            "headers": bob["headers"],
        }
        assert (await client.post("/generate-content", **invalid)).status_code == 422
        assert (await client.post("/generate-content", **invalid)).status_code == 422
        assert (await client.post("/generate-content", **ok)).status_code == 202
        r = await client.post("/generate-content", **ok)
        assert r.status_code == 429 and r.json()["error"] == "rate_limited", r.text


async def test_fastapi_answers_whenever_the_direct_route_would_skip_something(
    settings: Settings,
) -> None:
    with_cors = create_app(settings.model_copy(update={"cors_origins": ["https://app.example"]}))
    assert with_cors.limits.direct == {}  # CORS is a middleware of FastAPI's app
    stock = create_app(settings.model_copy(update={"api_direct_routes": False}))
    assert stock.limits.direct == {}  # API_DIRECT_ROUTES=false: FastAPI serves every route
    async with ApiServer(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        counting = Counting(limits_of(server).app)
        limits_of(server).app = counting
        carol = await register(client)
        counting.paths.clear()
        ok = {
            "json": {"prompt": "Tea", "contentType": "Blog Post Outline"},
            "headers": carol["headers"],
        }
        assert (await client.post("/generate-content", **ok)).status_code == 202
        assert counting.paths == []
        # A test's override of a dependency is FastAPI's to apply.
        server.app.http.dependency_overrides[object] = lambda: None
        try:
            assert (await client.post("/generate-content", **ok)).status_code == 202
        finally:
            server.app.http.dependency_overrides.clear()
        assert counting.paths == ["POST /generate-content"]
        # Behind a root path, the route's path is the router's to work out.
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": json.dumps(ok["json"]).encode()}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "method": "POST", "path": "/api/generate-content",
            "root_path": "/api", "query_string": b"", "headers": [
                (b"content-type", b"application/json"),
                (b"authorization", carol["headers"]["Authorization"].encode()),
            ],
        }  # fmt: skip
        await limits_of(server)(scope, receive, send)
        assert counting.paths[-1] == "POST /api/generate-content"


async def accepted(client: httpx.AsyncClient) -> float:
    """The count of 202 answers to POST /generate-content in /metrics (the process's)."""
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("smartgen_http_requests_total{") and all(
            label in line
            for label in ('route="/generate-content"', 'method="POST"', 'status="202"')
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_answers_are_counted_under_the_route_and_errors_answered_once(
    served: tuple[ApiServer, httpx.AsyncClient, Counting],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, client, counting = served
    dave = await register(client)
    counting.paths.clear()
    ok = {"json": {"prompt": "Tea", "contentType": "Blog Post Outline"}, "headers": dave["headers"]}
    before = await accepted(client)
    assert (await client.post("/generate-content", **ok)).status_code == 202
    assert await accepted(client) == before + 1

    # An unexpected error in the route: the app's 500 answer, one log line, no traceback.
    services = server.services
    queueing = services.queueing

    async def broken(**_: Any) -> None:
        raise RuntimeError("the queue fell over")

    original = queueing.queue.enqueue
    object.__setattr__(queueing.queue, "enqueue", broken)
    try:
        with caplog.at_level(logging.ERROR, logger="smartgen"):
            r = await client.post("/generate-content", **ok)
    finally:
        object.__setattr__(queueing.queue, "enqueue", original)
    assert r.status_code == 500, r.text
    assert r.json()["error"] == "internal_error"
    assert r.headers["x-request-id"] == r.json()["requestId"]
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and "RuntimeError" in errors[0].getMessage(), errors
    assert "POST /generate-content" not in counting.paths


def test_a_route_it_cannot_serve_is_left_to_fastapi_with_a_warning(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import smartgen.api.app as app_module

    monkeypatch.setattr(app_module, "DIRECT", [("GET", "/generate-content/{jobId}")])
    with caplog.at_level(logging.WARNING, logger="smartgen.api"):
        assert create_app(settings).limits.direct == {}
    assert "API_DIRECT_ROUTES: served by FastAPI instead" in caplog.text


def test_only_routes_of_a_simple_shape_are_served_directly(settings: Settings) -> None:
    app = create_app(settings).http
    with pytest.raises(NotDirect, match="no such route"):
        direct_routes(app, generation_router, [("PUT", "/generate-content")])
    # GET /generate-content/{jobId} has a path parameter: FastAPI's to parse.
    with pytest.raises(NotDirect, match="only a JSON body"):
        direct_routes(app, generation_router, [("GET", "/generate-content/{jobId}")])


async def test_concurrent_direct_requests_each_get_their_own_job(
    served: tuple[ApiServer, httpx.AsyncClient, Counting],
) -> None:
    server, client, counting = served
    erin = await register(client)
    counting.paths.clear()
    answers = await asyncio.gather(
        *(
            client.post(
                "/generate-content",
                json={"prompt": f"Tea {i}", "contentType": "Product Description"},
                headers=erin["headers"],
            )
            for i in range(20)
        )
    )
    assert [a.status_code for a in answers] == [202] * 20
    ids = {a.json()["jobId"] for a in answers}
    assert len(ids) == 20
    for job_id in ids:
        stored = await server.services.store.jobs.get(job_id)
        assert stored is not None and stored.user_id == erin["userId"]
    assert json.loads(answers[0].text)["status"] == "queued"
    assert counting.paths == []
