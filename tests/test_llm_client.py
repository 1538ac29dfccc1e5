"""ChatClient against the real fake LLM HTTP server on 127.0.0.1 (tests/fakellm.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from smartgen.config import Settings
from smartgen.llm.client import ChatClient, LLMError, parse_retry_after
from smartgen.models import Completion
from tests.conftest import free_port
from tests.fakellm import FakeLLM, Reply

KEY = "sk-or-v1-test-0123456789abcdef"
MODEL = "fake/model-7"

Factory = Callable[..., ChatClient]


def make_settings(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "openrouter_key": KEY,
        "openrouter_model": MODEL,
        "openrouter_referer": None,
        "openrouter_title": None,
        "llm_timeout_seconds": 1,
        "llm_max_tokens": 321,
        "llm_temperature": 0.3,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def make_client(fake_llm: FakeLLM) -> AsyncIterator[Factory]:
    """Build ChatClients against the fake server; every one is closed after the test."""
    clients: list[ChatClient] = []

    def factory(**overrides: Any) -> ChatClient:
        overrides.setdefault("base_url", fake_llm.base_url)
        client = ChatClient(make_settings(**overrides))
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
def marker() -> str:
    return f"[m-{uuid.uuid4().hex}]"


def msgs(marker: str, text: str = "Write about bread") -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a writer."},
        {"role": "user", "content": f"{text} {marker}"},
    ]


async def fail(client: ChatClient, marker: str) -> LLMError:
    with pytest.raises(LLMError) as info:
        await client.complete(msgs(marker))
    return info.value


async def collect(client: ChatClient, marker: str) -> tuple[list[str], Completion]:
    """All deltas of a stream, and the final Completion (which must be the last item)."""
    items: list[str | Completion] = []
    async with contextlib.aclosing(client.stream(msgs(marker))) as stream:
        async for item in stream:
            items.append(item)
    assert items, "the stream yielded nothing"
    *deltas, final = items
    assert isinstance(final, Completion), items
    assert all(isinstance(d, str) for d in deltas), items
    return [str(d) for d in deltas], final


async def stream_fail(client: ChatClient, marker: str) -> tuple[list[str], LLMError]:
    got: list[str] = []
    with pytest.raises(LLMError) as info:
        async with contextlib.aclosing(client.stream(msgs(marker))) as stream:
            async for item in stream:
                assert isinstance(item, str), "no Completion may follow an error"
                got.append(item)
    return got, info.value


def sse(*events: Any) -> bytes:
    """A server-sent-events body; dicts become JSON, strings are sent as they are."""
    out = b""
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        out += f"data: {data}\n\n".encode()
    return out


def delta(text: str) -> dict[str, Any]:
    return {"model": "up/model", "choices": [{"index": 0, "delta": {"content": text}}]}


# --- complete(): success ------------------------------------------------------------------


async def test_complete_returns_content_model_usage(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(content="  # Title\n\nBody text.\n  ")])
    client = make_client()
    result = await client.complete(msgs(marker))
    assert result == Completion(
        content="# Title\n\nBody text.",
        model=MODEL,  # the fake echoes the requested model
        usage={"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46},
        finish_reason="stop",
    )
    [call] = fake_llm.calls_for(marker)
    assert call.headers["accept-encoding"] == "identity"
    assert call.path == "/api/v1/chat/completions"
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.headers["content-type"] == "application/json"
    assert "http-referer" not in call.headers
    assert "x-title" not in call.headers
    assert call.body == {
        "model": MODEL,
        "messages": msgs(marker),
        "max_tokens": 321,
        "temperature": 0.3,
        "stream": False,
        "usage": {"include": True},
    }


async def test_complete_sends_referer_and_title_when_set(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    client = make_client(
        openrouter_referer="https://smartgen.example.com", openrouter_title="SmartGen Test"
    )
    result = await client.complete(msgs(marker))
    assert result.content.startswith("# Outline: Write about bread")
    [call] = fake_llm.calls_for(marker)
    assert call.headers["http-referer"] == "https://smartgen.example.com"
    assert call.headers["x-title"] == "SmartGen Test"


async def test_no_authorization_header_without_a_key(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    client = make_client(openrouter_key=None)
    await client.complete(msgs(marker))
    [call] = fake_llm.calls_for(marker)
    assert "authorization" not in call.headers


async def test_base_url_trailing_slash_is_harmless(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    client = make_client(base_url=fake_llm.base_url + "/")
    await client.complete(msgs(marker))
    [call] = fake_llm.calls_for(marker)
    assert call.path == "/api/v1/chat/completions"


async def test_model_falls_back_to_configured_one_and_usage_may_be_absent(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "Hello"}}]}
    fake_llm.script(marker, [Reply(json_body=body)])
    result = await make_client().complete(msgs(marker))
    assert result == Completion(content="Hello", model=MODEL, usage=None)


async def test_one_client_serves_concurrent_calls(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    client = make_client()
    results = await asyncio.gather(*(client.complete(msgs(marker, f"topic {i}")) for i in range(5)))
    for i, result in enumerate(results):
        assert result.content.startswith(f"# Outline: topic {i} {marker}")
    assert len(fake_llm.calls_for(marker)) == 5


# --- complete(): HTTP errors --------------------------------------------------------------


async def test_429_with_retry_after_seconds(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(status=429, headers={"Retry-After": "2"})])
    client = make_client()
    err = await fail(client, marker)
    assert err.retryable is True
    assert err.status == 429
    assert err.retry_after == 2
    assert "rate limit" in err.message
    # The next call (script exhausted) succeeds: the client holds no bad state.
    assert (await client.complete(msgs(marker))).content


async def test_429_with_http_date_retry_after(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    header = format_datetime(when, usegmt=True)
    fake_llm.script(marker, [Reply(status=429, headers={"Retry-After": header})])
    err = await fail(
        make_client(processing_lease_seconds=120, llm_retry_after_max_seconds=60), marker
    )
    assert err.retryable is True
    assert err.status == 429
    assert err.retry_after is not None
    assert 25 <= err.retry_after <= 30


async def test_429_without_retry_after(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(status=429)])
    err = await fail(make_client(), marker)
    assert err.retryable is True
    assert err.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_server_errors_are_retryable(
    fake_llm: FakeLLM, make_client: Factory, marker: str, status: int
) -> None:
    fake_llm.script(marker, [Reply(status=status)])
    err = await fail(make_client(), marker)
    assert err.retryable is True
    assert err.status == status
    # The upstream message is passed on, after the reason.
    assert f"fake upstream error {status}" in err.message


async def test_503_carries_retry_after(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(status=503, headers={"Retry-After": "7"})])
    err = await fail(make_client(), marker)
    assert (err.retryable, err.status, err.retry_after) == (True, 503, 7)


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (400, "rejected the request"),
        (401, "refused the API key"),
        (402, "insufficient credits"),
        (403, "moderation or permissions"),
        (404, "not found"),
    ],
)
async def test_client_errors_are_not_retryable(
    fake_llm: FakeLLM, make_client: Factory, marker: str, status: int, phrase: str
) -> None:
    fake_llm.script(marker, [Reply(status=status)])
    err = await fail(make_client(), marker)
    assert err.retryable is False
    assert err.status == status
    assert phrase in err.message
    assert KEY not in err.message
    assert KEY not in str(err)
    assert err.__cause__ is None


async def test_401_message_names_the_setting(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(status=401, json_body={"error": {"message": "No auth"}})])
    err = await fail(make_client(), marker)
    assert err.message == ("the model provider refused the API key (check OPENROUTER_KEY): No auth")


async def test_key_echoed_by_the_provider_is_not_repeated(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    """Some providers quote the key they refused; our message must not carry it on."""
    echoed = {"error": {"message": f"Invalid API key: {KEY} (Bearer {KEY})", "code": 401}}
    fake_llm.script(marker, [Reply(status=401, json_body=echoed)])
    err = await fail(make_client(), marker)
    assert err.retryable is False
    assert KEY not in err.message
    assert KEY not in str(err)
    assert "Invalid API key" in err.message


async def test_key_echoed_in_a_200_error_object_is_not_repeated(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    body = {"error": {"message": f"key {KEY} is disabled", "code": 403}}
    fake_llm.script(marker, [Reply(json_body=body)])
    err = await fail(make_client(), marker)
    assert err.retryable is False
    assert KEY not in str(err)


async def test_error_status_with_a_string_error(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(status=400, json_body={"error": "context length exceeded"})])
    err = await fail(make_client(), marker)
    assert err.retryable is False
    assert err.message.endswith(": context length exceeded")


async def test_error_status_with_a_non_json_body(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(status=502, raw_body=b"<html>Bad Gateway</html>")])
    err = await fail(make_client(), marker)
    assert err.retryable is True
    assert err.status == 502
    assert err.message == "the model provider answered HTTP 502"


async def test_long_upstream_messages_are_truncated(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(status=400, json_body={"error": {"message": "x" * 5000}})])
    err = await fail(make_client(), marker)
    assert len(err.message) <= 500


async def test_redirects_are_not_followed(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(status=301, headers={"Location": "http://127.0.0.1:1/x"})])
    err = await fail(make_client(), marker)
    assert err.status == 301
    assert err.retryable is False
    assert len(fake_llm.calls_for(marker)) == 1


# --- complete(): transport failures -------------------------------------------------------


async def test_hanging_provider_times_out(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    # The answer comes after 10 s: a client that waited for it would succeed, not fail
    # with its own timeout's message.
    fake_llm.script(marker, [Reply(delay=10)])
    client = make_client(llm_timeout_seconds=1)
    err = await fail(client, marker)
    assert err.retryable is True
    assert err.status is None
    assert "did not answer in time" in err.message


async def test_connection_refused(make_client: Factory, marker: str) -> None:
    port = free_port()  # bound then released: nothing listens there
    client = make_client(base_url=f"http://127.0.0.1:{port}/v1")
    err = await fail(client, marker)
    assert err.retryable is True
    assert err.status is None
    assert "could not reach" in err.message
    assert err.__cause__ is None
    assert err.__suppress_context__ is True


# --- complete(): malformed 200 answers ----------------------------------------------------


async def test_malformed_json_body(fake_llm: FakeLLM, make_client: Factory, marker: str) -> None:
    fake_llm.script(marker, [Reply(raw_body=b'{"choices": [')])
    err = await fail(make_client(), marker)
    assert err.retryable is True
    assert "malformed" in err.message


async def test_json_that_is_not_an_object(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(json_body=["not", "an", "object"])])
    err = await fail(make_client(), marker)
    assert err.retryable is True
    assert "malformed" in err.message


@pytest.mark.parametrize("code", [500, 502, None, "upstream_down"])
async def test_200_with_error_object_retryable(
    fake_llm: FakeLLM, make_client: Factory, marker: str, code: Any
) -> None:
    error: dict[str, Any] = {"message": "Upstream provider failed"}
    if code is not None:
        error["code"] = code
    fake_llm.script(marker, [Reply(json_body={"error": error})])
    err = await fail(make_client(), marker)
    assert err.retryable is True
    assert err.status == (code if isinstance(code, int) else None)
    assert err.message == "the model provider reported an error: Upstream provider failed"


@pytest.mark.parametrize("code", [400, 401, 402, 403])
async def test_200_with_error_object_not_retryable(
    fake_llm: FakeLLM, make_client: Factory, marker: str, code: int
) -> None:
    body = {"error": {"message": "Prompt too long", "code": code}}
    fake_llm.script(marker, [Reply(json_body=body)])
    err = await fail(make_client(), marker)
    assert err.retryable is False
    assert err.status == code
    assert "Prompt too long" in err.message


async def test_200_with_429_error_object_is_retryable(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(json_body={"error": {"code": 429}})])
    err = await fail(make_client(), marker)
    assert err.retryable is True
    assert err.message == "the model provider reported an error: unknown error"


async def test_nul_characters_are_dropped_from_the_answer(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    """PostgreSQL cannot store NUL, and it carries nothing a reader sees."""
    fake_llm.script(marker, [Reply(content="# Ti\x00tle\n\x00Body.")])
    result = await make_client().complete(msgs(marker))
    assert result.content == "# Title\nBody."


@pytest.mark.parametrize("content", ["", "   \n\t ", "\x00 \x00"])
async def test_empty_content(
    fake_llm: FakeLLM, make_client: Factory, marker: str, content: str
) -> None:
    fake_llm.script(marker, [Reply(content=content)])
    err = await fail(make_client(), marker)
    assert err.retryable is True
    assert "empty content" in err.message


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "model": "m"},
        {"choices": []},
        {"choices": "nope"},
        {"choices": ["text"]},
    ],
)
async def test_missing_choices(
    fake_llm: FakeLLM, make_client: Factory, marker: str, body: dict[str, Any]
) -> None:
    fake_llm.script(marker, [Reply(json_body=body)])
    err = await fail(make_client(), marker)
    assert err.retryable is True
    assert "without choices" in err.message


@pytest.mark.parametrize(
    "choice",
    [{"message": None}, {"message": {"content": None}}, {"message": "text"}, {}],
)
async def test_choice_without_message_content(
    fake_llm: FakeLLM, make_client: Factory, marker: str, choice: dict[str, Any]
) -> None:
    fake_llm.script(marker, [Reply(json_body={"choices": [choice]})])
    err = await fail(make_client(), marker)
    assert err.retryable is True
    assert "empty content" in err.message


# --- stream() -----------------------------------------------------------------------------


async def test_stream_yields_deltas_in_order_then_completion(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    text = "one two three four five six"
    fake_llm.script(marker, [Reply(content=text)])
    deltas, final = await collect(make_client(), marker)
    assert deltas == ["one", " two", " three", " four", " five", " six"]
    assert final.content == "".join(deltas) == text
    assert final.model == MODEL  # the model named by the chunks (the fake echoes the request's)
    assert final.usage == {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}
    [call] = fake_llm.calls_for(marker)
    assert call.body["stream"] is True
    assert call.body["model"] == MODEL
    assert call.body["max_tokens"] == 321
    assert call.headers["accept"] == "text/event-stream"
    assert call.headers["authorization"] == f"Bearer {KEY}"


async def test_stream_default_answer_is_reassembled(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    deltas, final = await collect(make_client(), marker)
    assert len(deltas) > 5
    assert final.content == "".join(deltas).strip()
    assert final.content.startswith(f"# Outline: Write about bread {marker}")


async def test_stream_stops_at_done(fake_llm: FakeLLM, make_client: Factory, marker: str) -> None:
    body = (
        b": keep-alive comment\n\n"
        + b"event: message\nid: 1\n"
        + sse(delta("Hello"), delta(", world"), "[DONE]", delta(" IGNORED"))
    )
    fake_llm.script(marker, [Reply(raw_body=body)])
    deltas, final = await collect(make_client(), marker)
    assert deltas == ["Hello", ", world"]
    assert final == Completion(content="Hello, world", model="up/model", usage=None)


async def test_stream_without_done_ends_at_eof(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    usage = {"model": "up/model", "choices": [], "usage": {"total_tokens": 9}}
    fake_llm.script(marker, [Reply(raw_body=sse(delta("a"), delta("b"), usage))])
    deltas, final = await collect(make_client(), marker)
    assert deltas == ["a", "b"]
    assert final == Completion(content="ab", model="up/model", usage={"total_tokens": 9})


async def test_stream_data_without_space(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    raw = b'data:{"choices":[{"delta":{"content":"tight"}}]}\n\ndata:[DONE]\n\n'
    fake_llm.script(marker, [Reply(raw_body=raw)])
    deltas, final = await collect(make_client(), marker)
    assert deltas == ["tight"]
    assert final.content == "tight"
    assert final.model == MODEL  # no model in the chunks: the configured one


@pytest.mark.parametrize(
    ("status", "retryable"), [(429, True), (500, True), (503, True), (400, False), (401, False)]
)
async def test_stream_error_status(
    fake_llm: FakeLLM, make_client: Factory, marker: str, status: int, retryable: bool
) -> None:
    fake_llm.script(marker, [Reply(status=status, headers={"Retry-After": "3"})])
    got, err = await stream_fail(make_client(), marker)
    assert got == []
    assert err.status == status
    assert err.retryable is retryable
    assert err.retry_after == 3
    assert f"fake upstream error {status}" in err.message
    assert KEY not in str(err)


async def test_stream_error_object_in_a_chunk(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    error = {"error": {"code": 502, "message": "Provider disconnected"}}
    fake_llm.script(marker, [Reply(raw_body=sse(delta("partial"), error, "[DONE]"))])
    got, err = await stream_fail(make_client(), marker)
    assert got == ["partial"]
    assert err.retryable is True
    assert err.status == 502
    assert "Provider disconnected" in err.message


async def test_stream_error_object_not_retryable(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    error = {"error": {"code": 400, "message": "Bad prompt"}, "choices": []}
    fake_llm.script(marker, [Reply(raw_body=sse(error, "[DONE]"))])
    got, err = await stream_fail(make_client(), marker)
    assert got == []
    assert err.retryable is False
    assert err.status == 400


async def test_stream_malformed_chunk(fake_llm: FakeLLM, make_client: Factory, marker: str) -> None:
    fake_llm.script(marker, [Reply(raw_body=sse(delta("ok"), "{not json"))])
    got, err = await stream_fail(make_client(), marker)
    assert got == ["ok"]
    assert err.retryable is True
    assert "malformed stream" in err.message


@pytest.mark.parametrize("chunk", ["42", '"text"', "[1, 2]", "null", '{"choices": ["x"]}'])
async def test_stream_chunk_of_the_wrong_shape(
    fake_llm: FakeLLM, make_client: Factory, marker: str, chunk: str
) -> None:
    fake_llm.script(marker, [Reply(raw_body=sse(delta("ok"), chunk, "[DONE]"))])
    got, err = await stream_fail(make_client(), marker)
    assert got == ["ok"]
    assert err.retryable is True
    assert "malformed stream" in err.message


async def test_stream_drops_nul_characters(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(raw_body=sse(delta("one\x00"), delta(" two"), "[DONE]"))])
    deltas, final = await collect(make_client(), marker)
    assert deltas == ["one", " two"]
    assert final.content == "one two"


async def test_stream_empty_content(fake_llm: FakeLLM, make_client: Factory, marker: str) -> None:
    fake_llm.script(marker, [Reply(raw_body=sse(delta(""), delta("  \n"), "[DONE]"))])
    got, err = await stream_fail(make_client(), marker)
    assert got == ["  \n"]
    assert err.retryable is True
    assert "empty content" in err.message


async def test_stream_hanging_provider_times_out(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.script(marker, [Reply(delay=10)])  # waiting for it would stream the answer
    got, err = await stream_fail(make_client(llm_timeout_seconds=1), marker)
    assert got == []
    assert err.retryable is True
    assert "did not answer in time" in err.message


async def test_stream_connection_refused(make_client: Factory, marker: str) -> None:
    client = make_client(base_url=f"http://127.0.0.1:{free_port()}/v1")
    got, err = await stream_fail(client, marker)
    assert got == []
    assert err.retryable is True
    assert "could not reach" in err.message


async def test_stream_closed_early_releases_the_connection(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    fake_llm.always(marker, Reply(content="a b c d e f g"))
    client = make_client()
    async with contextlib.aclosing(client.stream(msgs(marker))) as stream:
        async for item in stream:
            assert item == "a"
            break
    # The client still works afterwards.
    result = await client.complete(msgs(marker))
    assert result.content == "a b c d e f g"


async def test_stream_crlf_and_cr_line_endings(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    body = sse(delta("a"), delta("b")).replace(b"\n", b"\r\n") + sse(delta("c"), "[DONE]").replace(
        b"\n", b"\r"
    )
    fake_llm.script(marker, [Reply(raw_body=b": hi\r\n\r\n" + body)])
    deltas, final = await collect(make_client(), marker)
    assert deltas == ["a", "b", "c"]
    assert final.content == "abc"


async def test_stream_line_longer_than_the_read_buffer(
    fake_llm: FakeLLM, make_client: Factory, marker: str
) -> None:
    big = "é" * 300_000  # one 600 KB data line
    fake_llm.script(marker, [Reply(raw_body=sse(delta("start "), delta(big), "[DONE]"))])
    deltas, final = await collect(make_client(llm_max_tokens=10_000), marker)
    assert deltas == ["start ", big]
    assert final.content == "start " + big


# --- timeouts while the body arrives (a raw server that writes slowly) ---------------------


Writer = Callable[[asyncio.StreamWriter], Any]


@contextlib.asynccontextmanager
async def slow_server(answer: Writer) -> AsyncIterator[str]:
    """An HTTP server that reads one request per connection and runs `answer` on it."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            await answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


def sse_head() -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


async def test_stream_may_outlast_the_timeout_while_data_flows(
    make_client: Factory, marker: str
) -> None:
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head())
        for word in ["one", " two", " three", " four"]:
            writer.write(sse(delta(word)))
            await writer.drain()
            await asyncio.sleep(0.3)  # 1.2 s in all, never 0.5 s of silence
        writer.write(sse("[DONE]"))

    async with slow_server(answer) as url:
        deltas, final = await collect(make_client(base_url=url, llm_timeout_seconds=0.5), marker)
    assert deltas == ["one", " two", " three", " four"]
    assert final.content == "one two three four"


async def test_stream_that_stalls_times_out(make_client: Factory, marker: str) -> None:
    stalled_out = asyncio.Event()

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head() + sse(delta("partial")))
        await writer.drain()
        await asyncio.sleep(3)
        stalled_out.set()  # then the connection closes

    async with slow_server(answer) as url:
        got, err = await stream_fail(make_client(base_url=url, llm_timeout_seconds=0.5), marker)
        # In order, not by the clock: the client gave up while the server was still silent.
        assert not stalled_out.is_set()
    assert got == ["partial"]
    assert err.retryable is True
    assert err.status is None
    assert "did not answer in time" in err.message


async def test_complete_ends_within_the_timeout_even_if_the_body_trickles(
    make_client: Factory, marker: str
) -> None:
    """The job's lease counts on `complete()` ending within LLM_TIMEOUT_SECONDS."""
    body = json.dumps({"choices": [{"message": {"content": "Hello"}}]}).encode()

    async def answer(writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        writer.write(head.encode() + b"\r\n\r\n")
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    async with slow_server(answer) as url:
        # The whole body takes about 5 s: a client that waited for it would succeed.
        err = await fail(make_client(base_url=url, llm_timeout_seconds=0.5), marker)
    assert err.retryable is True
    assert "did not answer in time" in err.message


# --- lifecycle ----------------------------------------------------------------------------


async def test_close_is_idempotent_and_a_closed_client_refuses_work(
    fake_llm: FakeLLM, marker: str
) -> None:
    unused = ChatClient(make_settings(fake_llm.base_url))
    await unused.close()
    with pytest.raises(RuntimeError):
        await unused.complete(msgs(marker))

    used = ChatClient(make_settings(fake_llm.base_url), max_connections=2)
    assert (await used.complete(msgs(marker))).content
    await used.close()
    await used.close()
    with pytest.raises(RuntimeError):
        await used.complete(msgs(marker))


# --- parse_retry_after --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("99999", 3600.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: retry now
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None
    assert 115 <= seconds <= 120


def test_parse_retry_after_far_future_date_is_capped() -> None:
    when = datetime.now(UTC) + timedelta(days=3)
    assert parse_retry_after(format_datetime(when, usegmt=True)) == 3600.0


def test_llm_error_attributes() -> None:
    err = LLMError("boom", retryable=True, status=503, retry_after=4.0)
    assert str(err) == "boom"
    assert (err.message, err.retryable, err.status, err.retry_after) == ("boom", True, 503, 4.0)
