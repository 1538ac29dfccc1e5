"""ChatClient against a hostile or broken model provider (issue 21, items 12-15): the fake
LLM server (tests/fakellm.py) in its hostile modes, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import gzip
import json
from urllib.parse import quote

import pytest

from smartgen.llm import answers
from smartgen.llm.client import ChatClient
from smartgen.models import Completion
from tests import test_llm_client
from tests.fakellm import FakeLLM, Reply
from tests.test_llm_client import (
    KEY,
    Factory,
    collect,
    delta,
    fail,
    msgs,
    sse,
    stream_fail,
)

# The same fixtures as the well-behaved provider's tests.
make_client = test_llm_client.make_client
marker = test_llm_client.marker

LONG_KEY = "sk-or-v1-" + "0123456789abcdef" * 4  # as long as a real OpenRouter key


async def ask(client: ChatClient, marker: str) -> Completion:
    return await client.complete(msgs(marker))


def answer(content: str, **extra: object) -> dict[str, object]:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}}
    return {"choices": [choice], **extra}


# --- item 12: compression ----------------------------------------------------------------
async def test_a_gzip_bomb_is_refused_unread(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    # 64 MB of content in about 64 KB on the wire; unpacked it would be stored whole.
    body = json.dumps(answer("a" * 64_000_000)).encode()
    fake_llm.script(marker, [Reply(raw_body=body, encoding="gzip")])
    err = await fail(make_client(), marker)
    assert err.retryable is False
    assert "compressed" in err.message
    [call] = fake_llm.calls_for(marker)
    assert call.headers["accept-encoding"] == "identity"


async def test_a_compressed_stream_is_refused(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(
        marker,
        [Reply(sse=[sse(delta("hello"), "[DONE]").decode()], headers={"Content-Encoding": "br"})],
    )
    _, err = await stream_fail(make_client(), marker)
    assert err.retryable is False
    assert "compressed" in err.message


def test_gzip_helper_really_compresses() -> None:
    """The fake's bomb is a bomb: a small body that unpacks large."""
    packed = gzip.compress(b"a" * 10_000_000, compresslevel=9)
    assert len(packed) < 20_000


# --- item 13: sizes ----------------------------------------------------------------------
async def test_a_body_past_the_cap_is_a_clear_non_retried_failure(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    body = json.dumps(answer("b" * 2_000_000)).encode()
    fake_llm.script(marker, [Reply(raw_body=body)])
    err = await fail(make_client(llm_max_response_bytes=1_000_000), marker)
    assert err.retryable is False
    assert "LLM_MAX_RESPONSE_BYTES" in err.message


async def test_a_huge_error_body_still_reports_the_status(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    body = json.dumps({"error": {"message": "x" * 3_000_000}}).encode()
    fake_llm.script(marker, [Reply(status=503, raw_body=body)])
    err = await fail(make_client(llm_max_response_bytes=1_000_000), marker)
    assert err.status == 503
    assert err.retryable is True
    assert len(err.message) <= 500


async def test_content_is_capped_in_line_with_max_tokens(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(json_body=answer("word " * 20_000))])
    result = await ask(make_client(llm_max_tokens=100), marker)
    assert len(result.content) <= answers.content_limit(100)
    assert result.finish_reason == "length"


async def test_model_and_usage_are_bounded(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": 34.0,
        "total_tokens": True,
        "cost": float("1e300"),
        "junk": "z" * 100_000,
        "prompt_tokens_details": {"cached_tokens": 3, "evil": [1] * 1000},
    }
    body = answer("fine", model="m" * 5_000_000 + "\n\x1b[2J", usage=usage)
    fake_llm.script(marker, [Reply(json_body=body)])
    result = await ask(make_client(llm_max_response_bytes=16_000_000), marker)
    assert len(result.model) <= answers.MAX_MODEL_CHARS
    assert "\n" not in result.model and "\x1b" not in result.model
    assert result.usage == {
        "prompt_tokens": 12,
        "completion_tokens": 34.0,
        "prompt_tokens_details": {"cached_tokens": 3},
    }


async def test_a_stream_past_the_size_cap_fails(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    filler = ": " + "p" * 60_000 + "\n\n"  # comments: no content at all, only bytes
    fake_llm.script(marker, [Reply(sse_forever=filler)])
    _, err = await stream_fail(make_client(llm_max_response_bytes=1_000_000), marker)
    assert err.retryable is False
    assert "LLM_MAX_RESPONSE_BYTES" in err.message


async def test_comments_cannot_keep_a_stream_alive_past_its_deadline(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(sse_forever=": keep-alive\n\n", chunk_delay=0.05)])
    _, err = await stream_fail(make_client(llm_stream_max_seconds=1.5), marker)
    assert "LLM_STREAM_MAX_SECONDS" in err.message


async def test_a_stream_longer_than_the_content_cap_is_cut_and_marked(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    pieces = [sse(delta("word " * 1000)).decode() for _ in range(10)]
    fake_llm.script(marker, [Reply(sse=[*pieces, "data: [DONE]\n\n"])])
    deltas, final = await collect(make_client(llm_max_tokens=100), marker)
    assert len(final.content) <= answers.content_limit(100)
    assert sum(len(d) for d in deltas) <= answers.content_limit(100)
    assert final.finish_reason == "length"


async def test_finish_reason_length_is_reported(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    body = answer("cut off mid")
    body["choices"][0]["finish_reason"] = "length"  # type: ignore[index]
    fake_llm.script(marker, [Reply(json_body=body)])
    result = await ask(make_client(), marker)
    assert result.finish_reason == "length"
    chunk = delta("cut")
    chunk["choices"][0]["finish_reason"] = "length"
    fake_llm.script(marker, [Reply(raw_body=sse(delta("a "), chunk, "[DONE]"))])
    _, final = await collect(make_client(), marker)
    assert final.finish_reason == "length"


async def test_an_odd_finish_reason_is_not_kept(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    body = answer("ok")
    body["choices"][0]["finish_reason"] = "x" * 5000  # type: ignore[index]
    fake_llm.script(marker, [Reply(json_body=body)])
    result = await ask(make_client(), marker)
    assert result.finish_reason is None


# --- item 15: malformed answers, codes, keys, Retry-After ---------------------------------
async def test_deep_nesting_is_an_immediate_malformed_answer(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(raw_body=b"[" * 10_000 + b"]" * 10_000)])
    err = await fail(make_client(), marker)
    assert err.retryable is False
    assert "malformed" in err.message
    chunk = '{"choices":[{"delta":{"content":' + "[" * 10_000 + "]" * 10_000 + "}}]}"
    fake_llm.script(marker, [Reply(raw_body=sse(delta("a"), chunk))])
    _, err = await stream_fail(make_client(), marker)
    assert err.retryable is False
    assert "malformed" in err.message


async def test_a_lone_surrogate_is_an_immediate_malformed_answer(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    raw = b'{"choices":[{"message":{"content":"a \\ud800 b"}}]}'
    fake_llm.script(marker, [Reply(raw_body=raw)])
    err = await fail(make_client(), marker)
    assert err.retryable is False
    assert "malformed" in err.message
    fake_llm.script(
        marker, [Reply(raw_body=sse(delta("a"), '{"choices":[{"delta":{"content":"\\udfff"}}]}'))]
    )
    _, err = await stream_fail(make_client(), marker)
    assert err.retryable is False


async def test_a_lone_surrogate_in_an_error_message_is_replaced(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    raw = b'{"error":{"message":"bad \\ud800 thing"}}'
    fake_llm.script(marker, [Reply(status=400, raw_body=raw)])
    err = await fail(make_client(), marker)
    err.message.encode("utf-8")  # storable
    assert "bad" in err.message


async def test_error_code_true_is_not_a_status(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(json_body={"error": {"message": "odd", "code": True}})])
    err = await fail(make_client(), marker)
    assert err.status is None
    assert err.retryable is True


@pytest.mark.parametrize("code", [1, 99999, -5, "429"])
async def test_error_codes_outside_http_are_not_statuses(
    fake_llm: FakeLLM, make_client: Factory, marker: str, code: object
) -> None:
    fake_llm.script(marker, [Reply(json_body={"error": {"message": "odd", "code": code}})])
    err = await fail(make_client(), marker)
    assert err.status is None


async def test_retry_after_is_capped_within_the_lease(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(status=429, headers={"Retry-After": "999999"})])
    client = make_client(llm_timeout_seconds=5, llm_retry_after_max_seconds=30)
    err = await fail(client, marker)
    assert err.retry_after == 20  # the lease: LLM_TIMEOUT_SECONDS + 15 s, below the setting
    fake_llm.script(marker, [Reply(status=429, headers={"Retry-After": "999999"})])
    err = await fail(make_client(llm_retry_after_max_seconds=3), marker)
    assert err.retry_after == 3


def key_forms() -> list[str]:
    return [
        LONG_KEY,
        LONG_KEY.upper(),
        quote(LONG_KEY, safe=""),
        base64.b64encode(LONG_KEY.encode()).decode(),
        LONG_KEY.encode().hex(),
        LONG_KEY[5:40],  # a long fragment
    ]


@pytest.mark.parametrize("form", range(6))
async def test_the_key_is_redacted_from_content_model_and_errors(
    fake_llm: FakeLLM, make_client: Factory, marker: str, form: int
) -> None:
    echoed = key_forms()[form]
    body = answer(f"Your key is {echoed}.", model=f"m/{echoed}")
    fake_llm.script(marker, [Reply(json_body=body)])
    client = make_client(openrouter_key=LONG_KEY)
    result = await ask(client, marker)
    assert echoed not in result.content and echoed.lower() not in result.content.lower()
    assert "[redacted]" in result.content
    assert echoed not in result.model
    fake_llm.script(marker, [Reply(raw_body=sse(delta(f"key {echoed} here"), "[DONE]"))])
    deltas, final = await collect(make_client(openrouter_key=LONG_KEY), marker)
    assert echoed not in final.content and echoed not in "".join(deltas)
    error = {"error": {"message": f"bad key {echoed}", "code": 401}}
    fake_llm.script(marker, [Reply(status=401, json_body=error)])
    err = await fail(make_client(openrouter_key=LONG_KEY), marker)
    assert echoed not in err.message


async def test_error_messages_are_one_printable_line(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    forged = "upstream\n2026-01-01 00:00:00 ERROR   smartgen: forged line\x1b]0;title\x07"
    fake_llm.script(marker, [Reply(status=400, json_body={"error": {"message": forged}})])
    err = await fail(make_client(), marker)
    assert "\n" not in err.message and "\x1b" not in err.message and "\x07" not in err.message


def test_short_keys_are_redacted_exactly() -> None:
    redact = answers.Redactor(KEY)
    assert redact(f"a {KEY} b") == "a [redacted] b"
    assert redact("nothing here") == "nothing here"
    assert answers.Redactor(None)("text") == "text"
