"""The API's outer ASGI wrapper (`api.edge.HttpEdge`) driven directly: the headers every
answer gets, the request id, and the last stop for errors, each on its own path."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from smartgen.api.edge import HttpEdge
from smartgen.api.middleware import RequestLimits
from smartgen.kit import logcontext


def scope(headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "query_string": b"",
        "headers": headers or [],
        **extra,
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def run(app: Any, the_scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await HttpEdge(app)(the_scope, receive, send)
    return sent


def answering(headers: list[tuple[bytes, bytes]], status: int = 200) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def headers_of(sent: list[dict[str, Any]]) -> dict[bytes, bytes]:
    return dict(sent[0]["headers"])


async def test_every_answer_gets_the_security_headers_and_a_request_id() -> None:
    sent = await run(answering([(b"content-type", b"application/json")]), scope())
    headers = headers_of(sent)
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"referrer-policy"] == b"no-referrer"
    assert headers[b"x-frame-options"] == b"DENY"
    assert b"content-security-policy" not in headers  # not HTML
    assert b"cache-control" not in headers  # not authenticated
    assert len(headers[b"x-request-id"]) == 24
    assert logcontext.request_id.get() is None  # reset after the request


async def test_a_sane_caller_id_is_kept_and_a_hostile_one_replaced() -> None:
    kept = await run(answering([]), scope([(b"x-request-id", b"trace-1")]))
    assert headers_of(kept)[b"x-request-id"] == b"trace-1"
    hostile = await run(answering([]), scope([(b"x-request-id", b"a\r\nSet-Cookie: x=1")]))
    assert headers_of(hostile)[b"x-request-id"] != b"a\r\nSet-Cookie: x=1"
    assert len(headers_of(hostile)[b"x-request-id"]) == 24


@pytest.mark.parametrize(
    "the_scope",
    [
        scope([(b"authorization", b"Bearer x")]),
        scope(query_string=b"token=abc"),
    ],
    ids=["bearer", "token-in-query"],
)
async def test_authenticated_answers_are_not_stored(the_scope: dict[str, Any]) -> None:
    sent = await run(answering([]), the_scope)
    assert headers_of(sent)[b"cache-control"] == b"no-store"
    # A caching rule the route set itself is left alone.
    own = await run(answering([(b"cache-control", b"max-age=60")]), the_scope)
    assert [v for n, v in own[0]["headers"] if n == b"cache-control"] == [b"max-age=60"]


async def test_html_is_never_framed_unless_it_has_a_policy() -> None:
    html = await run(answering([(b"content-type", b"text/html; charset=utf-8")]), scope())
    assert headers_of(html)[b"content-security-policy"] == b"frame-ancestors 'none'"
    policy = (b"content-security-policy", b"default-src 'self'")
    own = await run(answering([(b"content-type", b"text/html"), policy]), scope())
    assert [v for n, v in own[0]["headers"] if n == policy[0]] == [policy[1]]


async def test_an_error_before_any_answer_is_a_clean_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("boom\nsecond line")

    with caplog.at_level(logging.ERROR, logger="smartgen.api"):
        sent = await run(broken, scope([(b"x-request-id", b"req-9")]))
    assert sent[0]["status"] == 500
    headers = headers_of(sent)
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"x-request-id"] == b"req-9"
    body = sent[1]["body"]
    assert b'"error": "internal_error"' in body and b'"requestId": "req-9"' in body
    assert b"boom" not in body  # nothing of the error reaches the caller
    assert any("unexpected RuntimeError" in r.getMessage() for r in caplog.records)


async def test_an_error_after_the_answer_began_is_dropped() -> None:
    async def half(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        raise RuntimeError("already answered")

    sent = await run(half, scope())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


async def test_other_scopes_pass_through_untouched() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await HttpEdge(app)({"type": "lifespan"}, receive, None)
    assert seen == ["lifespan"]


async def test_head_goes_to_get_through_the_request_limits() -> None:
    methods: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        methods.append(scope["method"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"body"})

    sent = await run(RequestLimits(app, max_body_bytes=10), scope(method="HEAD"))
    assert methods == ["GET"]
    assert [m.get("body") for m in sent[1:]] == [b""]
