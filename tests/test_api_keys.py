"""Personal API keys over a real API (uvicorn on loopback, real Redis and store): created
once, listed without their secret, scoped route by route, refused when expired or revoked
(in another API server too, at once), owned by their user; and every authenticated route
declares the scope a key needs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import socketio
from fastapi.routing import APIRoute

from smartgen.api.app import create_app
from smartgen.api.deps import BearerUser
from smartgen.config import Settings
from tests.conftest import ApiServer, register

WAIT = 10.0


async def until(check: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.02)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_key(
    client: httpx.AsyncClient, user: dict[str, Any], scopes: list[str], **extra: Any
) -> dict[str, Any]:
    r = await client.post(
        "/api-keys",
        json={"name": f"{'+'.join(scopes)} key", "scopes": scopes, **extra},
        headers=user["headers"],
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


# --- every route says what a key needs --------------------------------------------------

EXPECTED = {
    ("POST", "/generate-content"): "generate",
    ("GET", "/generate-content"): "read",
    ("GET", "/generate-content/{jobId}"): "read",
    ("DELETE", "/generate-content/{jobId}"): "generate",
    ("PATCH", "/generate-content/{jobId}"): "generate",
    ("POST", "/generate-content/{jobId}/run-now"): "generate",
    ("POST", "/generate-content/{jobId}/retry"): "generate",
    ("POST", "/generate-content/{jobId}/variations"): "generate",
    ("POST", "/generate-content/{jobId}/save"): "library",
    ("GET", "/contents"): "read",
    ("GET", "/usage"): "read",
    ("GET", "/voices"): "read",
    ("POST", "/voices"): "library",
    ("DELETE", "/voices/{voiceId}"): "library",
    ("GET", "/auth/me"): "read",
    ("POST", "/auth/logout"): None,
    ("POST", "/auth/password"): None,
    ("DELETE", "/auth/me"): None,
    ("POST", "/api-keys"): None,
    ("GET", "/api-keys"): None,
    ("DELETE", "/api-keys/{keyId}"): None,
    ("POST", "/webhooks"): "webhooks",
    ("GET", "/webhooks/secret"): "webhooks",
    ("POST", "/webhooks/{webhookId:uuid}/deliveries/{deliveryId}/redeliver"): "webhooks",
}
NO_SCOPE = object()


def _scopes(dependant: Any) -> tuple[bool, list[Any]]:
    """(whether the route authenticates, the scopes its dependencies require)."""
    authenticates, found = False, []
    for dep in dependant.dependencies:
        if isinstance(dep.call, BearerUser):
            authenticates = True
        scope = getattr(dep.call, "required_scope", NO_SCOPE)
        if scope is not NO_SCOPE:
            found.append(scope)
        deeper, more = _scopes(dep)
        authenticates, found = authenticates or deeper, found + more
    return authenticates, found


def _routes(routes: list[Any]) -> list[APIRoute]:
    """The app's routes, through the routers it includes (FastAPI keeps those apart)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += _routes(route.original_router.routes)
    return found


def test_every_authenticated_route_requires_a_scope(settings: Settings) -> None:
    app = create_app(settings).http
    seen = {}
    for route in _routes(app.routes):
        authenticates, scopes = _scopes(route.dependant)
        for method in route.methods:
            if authenticates:
                assert len(set(scopes)) == 1, f"{method} {route.path}: scopes {scopes}"
                seen[(method, route.path)] = scopes[0]
            else:
                assert not scopes, f"{method} {route.path} checks a scope but no credential"
    for route_key, scope in EXPECTED.items():
        assert seen.get(route_key, NO_SCOPE) == scope, route_key


# --- over a real API ---------------------------------------------------------------------


async def test_keys_are_shown_once_scoped_owned_and_revocable(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    alice, bob = await register(client), await register(client)
    # Refusals: no token, bad names, scopes and expiries.
    assert (
        await client.post("/api-keys", json={"name": "x", "scopes": ["read"]})
    ).status_code == 401
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for body in (
        {"name": "", "scopes": ["read"]},
        {"name": "   ", "scopes": ["read"]},
        {"name": "x" * 101, "scopes": ["read"]},
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["admin"]},
        {"name": "x"},
        {"name": "x", "scopes": ["read"], "expiresAt": "2001-01-01T00:00:00Z"},
        {"name": "x", "scopes": ["read"], "expiresAt": future[:19]},  # no time zone
        {"name": "x", "scopes": ["read"], "expiresAt": "soon"},
        {"name": "x", "scopes": ["read"], "owner": "bob"},
    ):
        r = await client.post("/api-keys", json=body, headers=alice["headers"])
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"] == "validation_error"

    reader = await new_key(client, alice, ["read", "read"], expiresAt=future)
    generator = await new_key(client, alice, ["generate"])
    everything = await new_key(client, alice, ["generate", "read", "library", "webhooks"])
    assert reader["key"].startswith("sg_") and len(reader["key"]) >= 3 + 43
    assert reader["prefix"] == reader["key"][3:11]
    assert reader["scopes"] == ["read"] and reader["expiresAt"] and reader["lastUsedAt"] is None

    # Listed newest first, never with the key or its hash.
    r = await client.get("/api-keys", headers=alice["headers"])
    assert r.status_code == 200
    listed = r.json()
    assert [k["id"] for k in listed] == [everything["id"], generator["id"], reader["id"]]
    assert all(
        set(k) == {"id", "name", "prefix", "scopes", "createdAt", "lastUsedAt", "expiresAt"}
        for k in listed
    )
    assert reader["key"] not in r.text
    assert (await client.get("/api-keys", headers=bob["headers"])).json() == []

    # A key works where a token does, within its scopes.
    read, gen, full = bearer(reader["key"]), bearer(generator["key"]), bearer(everything["key"])
    job = {"prompt": "Ten words on bread", "contentType": "Product Description"}
    r = await client.post("/generate-content", json=job, headers=read)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "insufficient_scope" and "'generate'" in r.json()["message"]
    r = await client.post("/generate-content", json={**job, "delaySeconds": 600}, headers=gen)
    assert r.status_code == 202, r.text
    job_id = r.json()["jobId"]
    assert (await client.get(f"/generate-content/{job_id}", headers=read)).status_code == 200
    assert (await client.get(f"/generate-content/{job_id}", headers=gen)).status_code == 403
    assert (await client.get("/usage", headers=read)).status_code == 200
    assert (await client.get("/auth/me", headers=read)).json()["id"] == alice["userId"]
    r = await client.post("/voices", json={"name": "Warm"}, headers=read)
    assert (r.status_code, r.json()["error"]) == (403, "insufficient_scope")
    assert (await client.post("/voices", json={"name": "Warm"}, headers=full)).status_code == 201
    r = await client.delete(f"/generate-content/{job_id}", headers=read)
    assert r.status_code == 403
    r = await client.delete(f"/generate-content/{job_id}", headers=gen)
    assert (r.status_code, r.json()["status"]) == (200, "cancelled")

    # Not even a full key manages keys or the account.
    for method, path, body in (
        ("POST", "/api-keys", {"name": "more", "scopes": ["read"]}),
        ("GET", "/api-keys", None),
        ("DELETE", f"/api-keys/{reader['id']}", None),
        ("POST", "/auth/logout", None),
        ("POST", "/auth/password", {"currentPassword": "correct horse", "newPassword": "x" * 12}),
        ("DELETE", "/auth/me", {"password": "correct horse"}),
        ("GET", "/auth/me/export", None),
    ):
        r = await client.request(method, path, json=body, headers=full)
        assert (r.status_code, r.json()["error"]) == (403, "insufficient_scope"), (path, r.text)

    # The event stream and the Socket.IO handshake take a key with `read`.
    async with client.stream("GET", "/events", params={"token": reader["key"]}) as stream:
        assert stream.status_code == 200
        assert (await anext(stream.aiter_bytes())).startswith(b":")
    r = await client.get("/events", params={"token": generator["key"]})
    assert (r.status_code, r.json()["error"]) == (403, "insufficient_scope")
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(api.url, auth={"token": reader["key"]}, transports=["websocket"])
    assert sio.connected
    await sio.disconnect()
    refused = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(api.url, auth={"token": generator["key"]}, transports=["websocket"])

    # Its use is recorded.
    listed = (await client.get("/api-keys", headers=alice["headers"])).json()
    assert next(k for k in listed if k["id"] == reader["id"])["lastUsedAt"] is not None

    # Unknown, malformed: 401.
    for credential in ("sg_" + "A" * 43, "sg_short", "sg_" + "!" * 50):
        r = await client.get("/auth/me", headers=bearer(credential))
        assert (r.status_code, r.json()["error"]) == (401, "invalid_token"), credential

    # Another user's key id, or none: 404; the owner's: 204, then refused at once.
    for who, key_id in ((bob, reader["id"]), (alice, "nope")):
        r = await client.delete(f"/api-keys/{key_id}", headers=who["headers"])
        assert (r.status_code, r.json()["error"]) == (404, "api_key_not_found"), r.text
    assert (await client.get("/auth/me", headers=read)).status_code == 200
    r = await client.delete(f"/api-keys/{reader['id']}", headers=alice["headers"])
    assert r.status_code == 204
    r = await client.get("/auth/me", headers=read)
    assert r.status_code == 401
    assert len((await client.get("/api-keys", headers=alice["headers"])).json()) == 2

    # The export lists the keys, never a key or a hash; deleting the account deletes them.
    r = await client.get("/auth/me/export", headers=alice["headers"])
    exported = r.json()["apiKeys"]
    assert {k["id"] for k in exported} == {generator["id"], everything["id"]}
    assert generator["key"] not in r.text and "hash" not in r.text.lower()
    store = api.services.store
    r = await client.request(
        "DELETE", "/auth/me", json={"password": "correct horse"}, headers=alice["headers"]
    )
    assert r.status_code == 204, r.text
    assert await store.api_keys.list_for_user(alice["userId"], limit=10) == []
    assert (await client.get("/auth/me", headers=full)).status_code == 401


async def test_an_expired_key_is_refused(client: httpx.AsyncClient) -> None:
    user = await register(client)
    # A key that works until its time, then not. On a loaded machine the create and the
    # first use may take longer than a short life: then again with a longer one.
    for life in (2.0, 8.0, 30.0):
        soon = datetime.now(UTC) + timedelta(seconds=life)
        key = await new_key(client, user, ["read"], expiresAt=soon.isoformat())
        r = await client.get("/auth/me", headers=bearer(key["key"]))
        if datetime.now(UTC) < soon:  # answered while the key was valid
            assert r.status_code == 200, r.text
            break
    else:
        raise AssertionError("the machine never answered within a key's 30 s life")

    async def expired() -> bool:
        r = await client.get("/auth/me", headers=bearer(key["key"]))
        return r.status_code == 401 and r.json()["error"] == "token_expired"

    await until(expired, "the key expires")
    assert datetime.now(UTC) >= soon


async def test_a_revoked_key_is_refused_by_another_api_server_at_once(settings: Settings) -> None:
    # Revocation caches that would hold for an hour: only the pub/sub message can tell the
    # second server in time (its key cache holds a looked-up key for a minute).
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
        key = await new_key(one, user, ["read"])
        kept = await new_key(one, user, ["read"])
        for k in (key, kept):  # known (cached) by the second server
            assert (await two.get("/auth/me", headers=bearer(k["key"]))).status_code == 200
        r = await one.delete(f"/api-keys/{key['id']}", headers=user["headers"])
        assert r.status_code == 204

        async def refused() -> bool:
            return (await two.get("/auth/me", headers=bearer(key["key"]))).status_code == 401

        await until(refused, "the second server refuses the revoked key")
        assert (await two.get("/auth/me", headers=bearer(kept["key"]))).status_code == 200
        # A password change ends login sessions, not keys (they are revoked one by one).
        r = await one.post(
            "/auth/password",
            json={"currentPassword": "correct horse", "newPassword": "a new password"},
            headers=user["headers"],
        )
        assert r.status_code == 200, r.text
        assert (await two.get("/auth/me", headers=bearer(kept["key"]))).status_code == 200


async def _true(value: bool) -> bool:
    return value
