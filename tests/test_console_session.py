"""The web console over HTTP: its page and files with their security headers, and its
session (README: Design, "The console's session"): `?session=cookie` on register/login,
`POST /auth/refresh` rotating the HttpOnly refresh cookie, reuse of a spent token ending
the whole family, logout and a password change ending it, the CSRF guard. The bearer
API stays as it was for clients that do not ask for a cookie."""

from __future__ import annotations

import asyncio
import re
import uuid
from http.cookies import SimpleCookie
from typing import Any

import httpx
import jwt

from tests.conftest import ApiServer

POLICY = (
    "default-src 'self'",
    "script-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "form-action 'self'",
)
CSRF = {"X-Smartgen-Session": "refresh"}
PASSWORD = "correct horse"


def refresh_cookie(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """The refresh cookie a response sets: (value, its attributes)."""
    headers = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    assert len(headers) == 1, headers
    jar: SimpleCookie = SimpleCookie()
    jar.load(headers[0])
    morsel = jar["smartgen_refresh"]
    attributes = {k: v for k, v in morsel.items() if v}
    attributes["raw"] = headers[0]
    return morsel.value, attributes


async def post(
    client: httpx.AsyncClient, path: str, cookie: str | None = None, **kw: Any
) -> httpx.Response:
    """A request carrying exactly this cookie (the client's own jar is not used)."""
    client.cookies.clear()
    headers = dict(kw.pop("headers", {}))
    if cookie is not None:
        headers["Cookie"] = f"smartgen_refresh={cookie}"
    response = await client.post(path, headers=headers, **kw)
    client.cookies.clear()
    return response


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def assert_security_headers(response: httpx.Response) -> None:
    policy = response.headers["content-security-policy"]
    directives = {d.strip() for d in policy.split(";")}
    assert set(POLICY) <= directives, policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_console_page_and_files_carry_the_security_headers(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert_security_headers(page)
    html = page.text
    # No inline script or style: every script has a src, styles come from a file.
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all(" src=" in s for s in scripts), scripts
    assert "<style" not in html and " style=" not in html and " on" + "click=" not in html
    assert "http://" not in html and "https://" not in html  # nothing from another host
    # The labels the browser tests (and assistive technology) find controls by.
    for label in ("Email", "Password", "Prompt", "Content type", "Search"):
        assert re.search(rf"<label for=\"[^\"]+\">{label}</label>", html), label
    for name in ("app.js", "api.js", "jobs.js", "markdown.js", "console.css"):
        r = await client.get(f"/console/{name}")
        assert r.status_code == 200, name
        assert_security_headers(r)
        kind = "text/css" if name.endswith(".css") else "javascript"
        assert kind in r.headers["content-type"], (name, r.headers["content-type"])
    for path in ("/console/../__init__.py", "/console/%2e%2e/__init__.py", "/console/nope.js"):
        assert (await client.get(path)).status_code == 404, path
    assert (await client.get("/docs")).status_code == 200  # /docs stays


async def test_bearer_api_is_unchanged_without_a_cookie_session(client: httpx.AsyncClient) -> None:
    email = f"api-{uuid.uuid4().hex[:8]}@example.com"
    r = await post(client, "/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201 and "set-cookie" not in r.headers
    claims = jwt.decode(r.json()["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] > 23 * 3600  # JWT_EXPIRES_MINUTES, as before
    r = await post(client, "/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200 and "set-cookie" not in r.headers
    r = await post(client, "/auth/logout", headers={"Authorization": f"Bearer {r.json()['token']}"})
    assert r.status_code == 204 and "set-cookie" not in r.headers
    r = await post(client, "/auth/login?session=bogus", json={"email": email, "password": PASSWORD})
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "session"


async def test_refresh_rotates_and_a_reused_token_ends_the_family(
    client: httpx.AsyncClient, api: ApiServer
) -> None:
    email = f"console-{uuid.uuid4().hex[:8]}@example.com"
    r = await post(
        client, "/auth/register?session=cookie", json={"email": email, "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    first, attributes = refresh_cookie(r)
    assert attributes["httponly"] and attributes["path"] == "/auth"
    assert attributes["samesite"].lower() == "strict"
    assert "secure" not in attributes  # plain http here; Secure when served over https
    assert int(attributes["max-age"]) == int(api.settings.refresh_token_days * 86400)
    claims = jwt.decode(r.json()["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] <= api.settings.console_token_minutes * 60 + 1
    assert first not in r.text  # the refresh token never reaches a script

    # CSRF guard: no custom header, no refresh (and the cookie is not spent).
    r = await post(client, "/auth/refresh", first)
    assert r.status_code == 403 and r.json()["error"] == "csrf_check_failed"
    r = await post(client, "/auth/refresh", first, headers={"X-Smartgen-Session": "yes"})
    assert r.status_code == 403
    r = await post(client, "/auth/refresh", None, headers=CSRF)
    assert r.status_code == 401 and r.json()["error"] == "no_session"
    for junk in ("x", "a" * 16 + "." + "b" * 43, first + "x", "../../etc"):
        r = await post(client, "/auth/refresh", junk, headers=CSRF)
        assert r.status_code == 401 and r.json()["error"] == "refresh_invalid", junk

    r = await post(client, "/auth/refresh", first, headers=CSRF)
    assert r.status_code == 200, r.text
    second, _ = refresh_cookie(r)
    assert second != first
    token = r.json()["token"]
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["email"] == email

    r = await post(client, "/auth/refresh", second, headers=CSRF)
    assert r.status_code == 200
    third, _ = refresh_cookie(r)

    # Someone replays a spent token: refused, and the whole family ends with it.
    r = await post(client, "/auth/refresh", first, headers=CSRF)
    assert r.status_code == 401 and r.json()["error"] == "refresh_reused"
    assert "max-age=0" in r.headers["set-cookie"].lower()  # the browser forgets it
    r = await post(client, "/auth/refresh", third, headers=CSRF)
    assert r.status_code == 401 and r.json()["error"] == "refresh_invalid"

    # Another sign-in is another family, untouched by the first one's end.
    r = await post(
        client, "/auth/login?session=cookie", json={"email": email, "password": PASSWORD}
    )
    fresh, _ = refresh_cookie(r)
    r = await post(client, "/auth/refresh", fresh, headers=CSRF)
    assert r.status_code == 200


async def test_logout_and_password_change_end_console_sessions(client: httpx.AsyncClient) -> None:
    email = f"out-{uuid.uuid4().hex[:8]}@example.com"
    r = await post(
        client, "/auth/register?session=cookie", json={"email": email, "password": PASSWORD}
    )
    cookie, _ = refresh_cookie(r)
    bearer = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await post(client, "/auth/logout", cookie, headers=bearer)
    assert r.status_code == 204
    cleared, attributes = refresh_cookie(r)
    assert cleared == "" and attributes["max-age"] == "0" and attributes["path"] == "/auth"
    r = await post(client, "/auth/refresh", cookie, headers=CSRF)
    assert r.status_code == 401
    assert (await client.get("/auth/me", headers=bearer)).status_code == 401

    # Two console sessions (two browsers); a password change ends both.
    sessions = []
    for _ in range(2):
        r = await post(
            client, "/auth/login?session=cookie", json={"email": email, "password": PASSWORD}
        )
        sessions.append((refresh_cookie(r)[0], r.json()["token"]))
    r = await client.post(
        "/auth/password",
        json={"currentPassword": PASSWORD, "newPassword": "another horse"},
        headers={"Authorization": f"Bearer {sessions[0][1]}"},
    )
    assert r.status_code == 200, r.text
    for cookie, _ in sessions:
        r = await post(client, "/auth/refresh", cookie, headers=CSRF)
        assert r.status_code == 401, r.text


async def test_refresh_of_a_deleted_account_is_refused(client: httpx.AsyncClient) -> None:
    email = f"gone-{uuid.uuid4().hex[:8]}@example.com"
    r = await post(
        client, "/auth/register?session=cookie", json={"email": email, "password": PASSWORD}
    )
    cookie, _ = refresh_cookie(r)
    r = await client.request(
        "DELETE",
        "/auth/me",
        json={"password": PASSWORD},
        headers={"Authorization": f"Bearer {r.json()['token']}"},
    )
    assert r.status_code == 204, r.text
    r = await post(client, "/auth/refresh", cookie, headers=CSRF)
    assert r.status_code == 401, r.text


async def test_refresh_tokens_are_stored_hashed_expire_and_race_safely(
    client: httpx.AsyncClient, api: ApiServer
) -> None:
    email = f"race-{uuid.uuid4().hex[:8]}@example.com"
    r = await post(
        client, "/auth/register?session=cookie", json={"email": email, "password": PASSWORD}
    )
    cookie, _ = refresh_cookie(r)
    family, secret = cookie.split(".")
    redis = api.services.redis
    keys = [text(k) async for k in redis.scan_iter(match="*:rt:*")]
    mine = [k for k in keys if family in k or k.endswith(":rt:user:" + r.json()["user"]["id"])]
    assert mine, keys
    lifetime = api.settings.refresh_token_days * 86400
    for key in keys:
        assert secret not in key and cookie not in key  # only its SHA-256 names it
        assert 0 < await redis.ttl(key) <= lifetime, key
        kind = text(await redis.type(key))
        if kind == "hash":
            assert secret not in str(await redis.hgetall(key))
    # Two refreshes with the same token at once: one wins, the other is a reuse and ends
    # the family, the winner's successor included.
    headers = {**CSRF, "Cookie": f"smartgen_refresh={cookie}"}
    async with (
        httpx.AsyncClient(base_url=api.url) as one,
        httpx.AsyncClient(base_url=api.url) as two,
    ):
        answers = await asyncio.gather(
            one.post("/auth/refresh", headers=headers), two.post("/auth/refresh", headers=headers)
        )
    assert sorted(a.status_code for a in answers) == [200, 401], [a.text for a in answers]
    winner = next(a for a in answers if a.status_code == 200)
    loser = next(a for a in answers if a.status_code == 401)
    assert loser.json()["error"] == "refresh_reused"
    successor, _ = refresh_cookie(winner)
    r = await post(client, "/auth/refresh", successor, headers=CSRF)
    assert r.status_code == 401
