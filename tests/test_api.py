"""The HTTP API over a real connection: auth, queueing, validation, isolation, save."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

import httpx
import pytest

from smartgen.config import Settings
from tests.conftest import ApiServer, register

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def test_register_login_me(client: httpx.AsyncClient) -> None:
    user = await register(client, "Ada@Example.com")
    r = await client.post(
        "/auth/register", json={"email": "ada@example.com", "password": "another one"}
    )
    assert r.status_code == 409
    assert r.json()["error"] == "email_taken"
    r = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": "wrong password"}
    )
    assert r.status_code == 401
    assert r.json()["message"] == "Wrong email or password"
    r = await client.post(
        "/auth/login", json={"email": "nobody@example.com", "password": "correct horse"}
    )
    assert r.status_code == 401
    r = await client.post(
        "/auth/login", json={"email": "ADA@example.com", "password": "correct horse"}
    )
    assert r.status_code == 200
    token = r.json()["token"]
    r = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json()["email"] == "ada@example.com"
    assert r.json()["id"] == user["userId"]


async def test_register_validation(client: httpx.AsyncClient) -> None:
    r = await client.post("/auth/register", json={"email": "not-an-email", "password": "short"})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "validation_error"
    fields = {d["field"] for d in body["details"]}
    assert fields == {"email", "password"}
    # Our validators' words, without pydantic's "Value error, " prefix.
    assert {"field": "email", "message": "must be an email address"} in body["details"]


async def test_queue_returns_seed_shape(client: httpx.AsyncClient, api: ApiServer) -> None:
    user = await register(client)
    before = datetime.now().astimezone()
    r = await client.post(
        "/generate-content",
        json={"prompt": "  How to bake a sourdough bread  ", "contentType": "Blog Post Outline"},
        headers=user["headers"],
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == {
        "message",
        "jobId",
        "status",
        "delaySeconds",
        "scheduledFor",
        "estimatedCompletionTime",
        "estimatedCost",
    }
    assert body["message"] == "Content generation job queued successfully"
    assert body["status"] == "queued"
    assert body["delaySeconds"] == 1 and isinstance(body["delaySeconds"], int)
    assert uuid.UUID(body["jobId"]).version == 4
    assert ISO_MS.match(body["scheduledFor"]) and ISO_MS.match(body["estimatedCompletionTime"])
    scheduled = parse(body["scheduledFor"])
    assert 0.5 <= (scheduled - before).total_seconds() <= 3
    assert (parse(body["estimatedCompletionTime"]) - scheduled).total_seconds() == 30

    r = await client.get(f"/generate-content/{body['jobId']}", headers=user["headers"])
    assert r.status_code == 200
    job = r.json()
    assert job["status"] in {"queued", "processing", "completed"}
    assert job["prompt"] == "How to bake a sourdough bread"
    assert job["contentType"] == "Blog Post Outline"
    assert "error" not in job
    # The job is in the queue as a delayed bullmq job with our id.
    assert await api.services.queue.state(body["jobId"]) in {"delayed", "waiting", "active"}


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        (
            {"prompt": "x", "contentType": "Poem"},
            422,
            "'Blog Post Outline', 'Product Description' or 'Social Media Caption'",
        ),
        ({"prompt": "   ", "contentType": "Blog Post Outline"}, 422, "prompt"),
        ({"contentType": "Blog Post Outline"}, 422, "prompt: required"),
        (
            {"prompt": "x", "contentType": "Blog Post Outline", "extra": 1},
            422,
            "extra: unknown field",
        ),
        ({"prompt": "x" * 4001, "contentType": "Blog Post Outline"}, 422, "at most 4000"),
        ({"prompt": 5, "contentType": "Blog Post Outline"}, 422, "prompt"),
        # PostgreSQL cannot store NUL: refused up front on every store, alike.
        ({"prompt": "a\u0000b", "contentType": "Blog Post Outline"}, 422, "NUL"),
    ],
)
async def test_queue_validation(
    client: httpx.AsyncClient, payload: dict[str, object], status: int, fragment: str
) -> None:
    user = await register(client)
    r = await client.post("/generate-content", json=payload, headers=user["headers"])
    assert r.status_code == status, r.text
    assert fragment in r.json()["message"]


async def test_queue_rejects_non_json(client: httpx.AsyncClient) -> None:
    user = await register(client)
    headers = {**user["headers"], "Content-Type": "application/json"}
    r = await client.post("/generate-content", content=b"{not json", headers=headers)
    assert r.status_code == 400
    assert r.json() == {
        "error": "invalid_json",
        "message": "Request body is not valid JSON",
        "requestId": r.headers["x-request-id"],
    }
    r = await client.post("/generate-content", headers=user["headers"])
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Missing Authorization header"),
        ("Basic abc", "Authorization header must be: Bearer <token>"),
        ("Bearer not-a-jwt", "Malformed token"),
    ],
)
async def test_auth_required(client: httpx.AsyncClient, header: str | None, message: str) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("GET", "/generate-content"),
        ("POST", "/generate-content"),
        ("GET", "/auth/me"),
    ]:
        r = await client.request(
            method, path, headers=headers, json={"prompt": "x", "contentType": "Blog Post Outline"}
        )
        assert r.status_code == 401
        assert message in r.json()["message"]


async def test_unknown_and_malformed_ids(client: httpx.AsyncClient) -> None:
    user = await register(client)
    for job_id in [str(uuid.uuid4()), "not-a-uuid", "%00", "a" * 300]:
        r = await client.get(f"/generate-content/{job_id}", headers=user["headers"])
        assert r.status_code == 404, (job_id, r.text)
        assert r.json()["error"] == "job_not_found"
        r = await client.post(f"/generate-content/{job_id}/save", headers=user["headers"])
        assert r.status_code == 404


async def test_isolation_between_users(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    r = await client.post(
        "/generate-content",
        json={"prompt": "alice's secret", "contentType": "Product Description"},
        headers=alice["headers"],
    )
    job_id = r.json()["jobId"]
    r = await client.get(f"/generate-content/{job_id}", headers=bob["headers"])
    assert r.status_code == 404
    r = await client.post(f"/generate-content/{job_id}/save", headers=bob["headers"])
    assert r.status_code == 404
    r = await client.get("/generate-content", headers=bob["headers"])
    assert r.json() == []
    r = await client.get("/generate-content", headers=alice["headers"])
    assert [j["jobId"] for j in r.json()] == [job_id]


async def test_list_order_limit_and_filter(client: httpx.AsyncClient) -> None:
    user = await register(client)
    ids = []
    for i in range(4):
        r = await client.post(
            "/generate-content",
            json={"prompt": f"topic {i}", "contentType": "Social Media Caption"},
            headers=user["headers"],
        )
        ids.append(r.json()["jobId"])
    r = await client.get("/generate-content", headers=user["headers"])
    assert [j["jobId"] for j in r.json()] == ids[::-1]
    r = await client.get("/generate-content?limit=2", headers=user["headers"])
    assert [j["jobId"] for j in r.json()] == ids[:1:-1]
    r = await client.get("/generate-content?status=completed", headers=user["headers"])
    assert r.json() == [] or all(j["status"] == "completed" for j in r.json())
    r = await client.get("/generate-content?status=done", headers=user["headers"])
    assert r.status_code == 422
    r = await client.get("/generate-content?limit=0", headers=user["headers"])
    assert r.status_code == 422


async def test_save_requires_completed(client: httpx.AsyncClient) -> None:
    user = await register(client)
    r = await client.post(
        "/generate-content",
        json={"prompt": "not yet", "contentType": "Blog Post Outline"},
        headers=user["headers"],
    )
    job_id = r.json()["jobId"]
    r = await client.post(f"/generate-content/{job_id}/save", headers=user["headers"], json={})
    assert r.status_code == 409
    assert r.json()["error"] == "job_not_completed"


async def test_health_and_docs(client: httpx.AsyncClient, api: ApiServer) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {api.services.store.name: "ok", "redis": "ok"}
    assert (await client.get("/docs")).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    assert "/generate-content/{jobId}/save" in schema["paths"]
    # Every route behind a token shows the Bearer scheme (the docs' "Authorize" button);
    # the public ones do not.
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    secured = {
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if operation.get("security") == [{"HTTPBearer": []}]
    }
    assert secured == {
        "POST /generate-content",
        "GET /generate-content",
        "GET /generate-content/{jobId}",
        "DELETE /generate-content/{jobId}",
        "PATCH /generate-content/{jobId}",
        "POST /generate-content/{jobId}/run-now",
        "POST /generate-content/{jobId}/retry",
        "POST /generate-content/{jobId}/save",
        "POST /generate-content/{jobId}/variations",
        "POST /voices",
        "GET /voices",
        "GET /voices/{voiceId}",
        "PATCH /voices/{voiceId}",
        "DELETE /voices/{voiceId}",
        "GET /usage",
        "GET /events",
        "GET /contents",
        "GET /contents/export",
        "GET /contents/{contentId}",
        "PATCH /contents/{contentId}",
        "DELETE /contents/{contentId}",
        "POST /generate-content/{jobId}/feedback",
        "DELETE /generate-content/{jobId}/feedback",
        "GET /auth/me",
        "POST /auth/logout",
        "POST /auth/password",
        "DELETE /auth/me",
        "GET /auth/me/export",
        "POST /api-keys",
        "GET /api-keys",
        "DELETE /api-keys/{keyId}",
        "POST /webhooks",
        "GET /webhooks",
        "GET /webhooks/secret",
        "POST /webhooks/secret/rotate",
        "GET /webhooks/{webhookId}",
        "PATCH /webhooks/{webhookId}",
        "DELETE /webhooks/{webhookId}",
        "POST /webhooks/{webhookId}/test",
        "GET /webhooks/{webhookId}/deliveries",
        "POST /webhooks/{webhookId}/deliveries/{deliveryId}/redeliver",
        "POST /batches",
        "GET /batches",
        "GET /batches/{batchId}",
        "GET /batches/{batchId}/jobs",
        "DELETE /batches/{batchId}",
        "POST /batches/{batchId}/retry-failed",
        "GET /batches/{batchId}/results",
    }
    body = schema["paths"]["/generate-content"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/GenerationRequest")


async def test_saved_contents_are_isolated(client: httpx.AsyncClient, api: ApiServer) -> None:
    from smartgen.models import Completion

    alice, bob = await register(client), await register(client)
    r = await client.post(
        "/generate-content",
        json={"prompt": "alice's private draft", "contentType": "Blog Post Outline"},
        headers=alice["headers"],
    )
    job_id = r.json()["jobId"]
    store = api.services.store
    # Complete it through the store, as the worker would.
    from smartgen.kit.times import utcnow

    assert await store.jobs.mark_processing(job_id, at=utcnow(), attempt=1)
    completion = Completion(content="## Private\n\ntext", model="m")
    assert await store.jobs.mark_completed(job_id, result=completion, at=utcnow())
    r = await client.post(f"/generate-content/{job_id}/save", headers=alice["headers"])
    assert r.status_code == 201
    content_id = r.json()["contentId"]
    assert r.json()["title"] == "Private"
    assert (
        await client.get(f"/contents/{content_id}", headers=alice["headers"])
    ).status_code == 200
    assert (await client.get(f"/contents/{content_id}", headers=bob["headers"])).status_code == 404
    assert (await client.get("/contents", headers=bob["headers"])).json() == []
    assert (await client.get("/contents/not-a-uuid", headers=alice["headers"])).status_code == 404


async def test_a_title_with_nul_is_refused(client: httpx.AsyncClient) -> None:
    user = await register(client)
    r = await client.post(
        f"/generate-content/{uuid.uuid4()}/save",
        json={"title": "bad\u0000title"},
        headers=user["headers"],
    )
    assert r.status_code == 422, r.text
    assert "title: must not contain NUL" in r.json()["message"]


async def test_on_started_runs_after_start_up_only_when_given(settings: Settings) -> None:
    from smartgen.api.app import create_app

    calls: list[bool] = []
    for hook in (None, lambda: calls.append(True)):
        app = create_app(settings, on_started=hook).http
        async with app.router.lifespan_context(app):
            assert app.state.services.store is not None  # after start-up
    assert calls == [True]
