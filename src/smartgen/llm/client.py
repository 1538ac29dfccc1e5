"""Client for OpenAI-compatible chat completions (OpenRouter, Ollama, llama.cpp, vLLM, …).

`complete()` returns one `Completion`; `stream()` yields text deltas then the final
`Completion`. Both share request building and error classification, so every caller
sees the same `LLMError` with `retryable` and `retry_after` set.

It runs on one pooled `aiohttp.ClientSession`, not httpx: httpx's pool does work in
proportion to its pooled connections on every request, which left a busy worker short of
CPU (`bench/HISTORY.md`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from smartgen.config import Settings
from smartgen.kit import jsoncodec, logcontext
from smartgen.llm.errors import RETRYABLE_STATUS, LLMError
from smartgen.models import Completion, ModelRequest


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), capped at 1 h."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, min(seconds, 3600.0))


def _error_message(body: Any, secret: str | None = None) -> str | None:
    text: str | None = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
            text = str(msg) if msg else None
        elif isinstance(err, str):
            text = err
    if text and secret:
        # Some providers quote the key they refused: never pass it on.
        text = text.replace(secret, "[redacted]")
    return text[:300] if text else None


def _status_error(
    status: int, body: Any, retry_after: float | None, secret: str | None = None
) -> LLMError:
    detail = _error_message(body, secret)
    reasons = {
        400: "the model provider rejected the request",
        401: "the model provider refused the API key (check OPENROUTER_KEY)",
        402: "the model provider account has insufficient credits",
        403: "the model provider refused the request (moderation or permissions)",
        404: "the model or endpoint was not found (check OPENROUTER_MODEL and BASE_URL)",
        429: "the model provider is rate limiting requests",
    }
    reason = reasons.get(status, f"the model provider answered HTTP {status}")
    message = f"{reason}: {detail}" if detail else reason
    return LLMError(
        message[:500],
        retryable=status in RETRYABLE_STATUS or status >= 500,
        status=status,
        retry_after=retry_after,
    )


def _completion_from_body(body: Any, fallback_model: str, secret: str | None = None) -> Completion:
    if not isinstance(body, dict):
        raise LLMError("the model provider sent a malformed answer", retryable=True)
    if body.get("error"):
        # OpenRouter reports some upstream failures as an `error` object inside a 200.
        err = body["error"]
        code = err.get("code") if isinstance(err, dict) else None
        status = code if isinstance(code, int) else None
        retryable = status is None or status in RETRYABLE_STATUS or status >= 500
        detail = _error_message(body, secret) or "unknown error"
        return_error = LLMError(
            f"the model provider reported an error: {detail}", retryable=retryable, status=status
        )
        raise return_error
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMError("the model provider sent an answer without choices", retryable=True)
    message = choices[0].get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    text = _text(content) if isinstance(content, str) else ""
    if not text:
        raise LLMError("the model returned empty content", retryable=True)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    return Completion(
        content=text, model=_text(str(body.get("model") or fallback_model)), usage=usage
    )


JOB_HEADER = "X-Smartgen-Job-Id"


def job_headers(base: dict[str, str] | None = None) -> dict[str, str] | None:
    """`base` plus the id of the job being generated (`X-Smartgen-Job-Id`), so that a
    gateway's or a local server's logs can be followed back to the job."""
    job_id = logcontext.job_id.get()
    if not job_id:
        return base
    return {**(base or {}), JOB_HEADER: job_id}


def _without_nul(value: str) -> str:
    """Model text without NUL characters: PostgreSQL cannot store them, and they carry
    nothing a reader sees."""
    return value.replace("\x00", "")


def _text(value: str) -> str:
    """Model text as stored: trimmed, without NUL characters."""
    return _without_nul(value).strip()


def _chunk_deltas(chunk: Any) -> list[str]:
    """The text pieces of one stream chunk; a chunk of another shape is a malformed stream."""
    choices = (chunk.get("choices") or []) if isinstance(chunk, dict) else None
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise LLMError("the model provider sent a malformed stream", retryable=True)
    deltas: list[str] = []
    for choice in choices:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise LLMError("the model provider sent a malformed stream", retryable=True)
        content = delta.get("content")
        if isinstance(content, str) and content:
            deltas.append(content)
    return deltas


async def _sse_lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The lines of an event stream without their endings (CRLF, LF or CR, as SSE allows).

    Split here rather than with `StreamReader.readline`, which caps a line at twice the
    read buffer (128 KiB): one large chunk from a provider must not fail the stream.
    """
    pending: list[bytes] = []
    async for data in content.iter_any():
        if b"\n" not in data and b"\r" not in data:
            pending.append(data)
            continue
        if pending:
            pending.append(data)
            data = b"".join(pending)
            pending = []
        lines = data.splitlines(keepends=True)
        if not lines[-1].endswith((b"\n", b"\r")):
            pending.append(lines.pop())
        # A CRLF split across two reads leaves an extra empty line: harmless, never data.
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
    if pending:
        yield b"".join(pending).decode("utf-8", "replace")


async def _lines_of(raw: bytes) -> AsyncIterator[str]:
    for line in raw.splitlines():
        yield line.decode("utf-8", "replace")


class ChatClient:
    """One pooled HTTP session per process; use it in the running loop, close on exit."""

    def __init__(self, settings: Settings, *, max_connections: int = 100) -> None:
        self.model = settings.openrouter_model
        self._settings = settings
        self._secret = settings.openrouter_key or None
        self._url = settings.base_url + "/chat/completions"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if settings.openrouter_key:
            headers["Authorization"] = f"Bearer {settings.openrouter_key}"
        if settings.openrouter_referer:
            headers["HTTP-Referer"] = settings.openrouter_referer
        if settings.openrouter_title:
            headers["X-Title"] = settings.openrouter_title
        self._headers = headers
        self._max_connections = max_connections
        # The whole call of `complete()` ends within LLM_TIMEOUT_SECONDS (the job's lease
        # assumes it); a stream may run longer as long as the provider keeps sending.
        self._timeout = aiohttp.ClientTimeout(total=settings.llm_timeout_seconds, connect=10)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=10, sock_read=settings.llm_timeout_seconds
        )
        self._http: aiohttp.ClientSession | None = None
        self._closed = False
        # An explicit proxy (LLM_PROXY); the environment's HTTP(S)_PROXY is not read per
        # request, which would cost two thread-pool lookups each time.
        self._proxy = settings.llm_proxy

    def _session(self) -> aiohttp.ClientSession:
        """The session, created on first use so that it belongs to the running loop."""
        if self._http is None:
            if self._closed:
                raise RuntimeError("the ChatClient is closed")
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    limit_per_host=self._max_connections,
                    keepalive_timeout=30,
                ),
                headers=self._headers,
                timeout=self._timeout,
                json_serialize=jsoncodec.dumps,
            )
        return self._http

    def payload(
        self,
        messages: list[dict[str, str]],
        *,
        stream: bool = False,
        request: ModelRequest | None = None,
    ) -> dict[str, Any]:
        """The request body: the job's model, length budget and temperature where it chose
        them, OPENROUTER_FALLBACK_MODELS as OpenRouter's `models` routing list, and usage
        accounting (OpenRouter then reports tokens and `cost`)."""
        model = (request.model if request else None) or self.model
        max_tokens = request.max_tokens if request and request.max_tokens else None
        temperature = request.temperature if request else None
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens or self._settings.llm_max_tokens,
            "temperature": self._settings.llm_temperature if temperature is None else temperature,
            "stream": stream,
            "usage": {"include": True},
        }
        fallbacks = [m for m in self._settings.fallback_models if m != model]
        if fallbacks:
            body["models"] = [model, *fallbacks]
        return body

    async def complete(
        self, messages: list[dict[str, str]], *, request: ModelRequest | None = None
    ) -> Completion:
        session = self._session()
        model = (request.model if request else None) or self.model
        try:
            async with session.post(
                self._url,
                json=self.payload(messages, request=request),
                headers=job_headers(),
                allow_redirects=False,
                proxy=self._proxy,
            ) as response:
                raw = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            raise LLMError("the model provider did not answer in time", retryable=True) from None
        except aiohttp.ClientError:
            raise LLMError("could not reach the model provider", retryable=True) from None
        try:
            body = jsoncodec.loads(raw)
        except ValueError:
            body = None
        if status != 200:
            raise _status_error(status, body, parse_retry_after(retry_after), self._secret)
        return _completion_from_body(body, model, self._secret)

    async def generate(self, request: ModelRequest) -> Completion:
        return await self.complete(request.messages, request=request)

    def generate_stream(self, request: ModelRequest) -> AsyncIterator[str | Completion]:
        return self.stream(request.messages, request=request)

    async def stream(
        self, messages: list[dict[str, str]], *, request: ModelRequest | None = None
    ) -> AsyncIterator[str | Completion]:
        """Yield text deltas as they arrive, then the assembled `Completion` last."""
        session = self._session()
        parts: list[str] = []
        model = (request.model if request else None) or self.model
        usage: dict[str, Any] | None = None
        try:
            async with session.post(
                self._url,
                json=self.payload(messages, stream=True, request=request),
                headers=job_headers({"Accept": "text/event-stream"}),
                timeout=self._stream_timeout,
                allow_redirects=False,
                proxy=self._proxy,
            ) as response:
                if response.status != 200:
                    raw = await response.read()
                    try:
                        body = jsoncodec.loads(raw)
                    except ValueError:
                        body = None
                    raise _status_error(
                        response.status,
                        body,
                        parse_retry_after(response.headers.get("Retry-After")),
                        self._secret,
                    )
                if "text/event-stream" not in response.headers.get("Content-Type", ""):
                    # Not labelled as a stream: a provider that answers a stream request
                    # with one whole JSON answer, or a stream under another label.
                    raw = await response.read()
                    try:
                        body = jsoncodec.loads(raw)
                    except ValueError:
                        body = None
                    if isinstance(body, dict):
                        whole = _completion_from_body(body, model, self._secret)
                        yield whole.content
                        yield whole
                        return
                    lines: AsyncIterator[str] = _lines_of(raw)
                else:
                    lines = _sse_lines(response.content)
                async for line in lines:
                    if not line.startswith("data:"):
                        continue  # comments (": OPENROUTER PROCESSING"), blank lines, ids
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = jsoncodec.loads(data)
                    except ValueError:
                        chunk = None
                    if isinstance(chunk, dict) and chunk.get("error"):
                        # raises the classified error
                        _completion_from_body(chunk, model, self._secret)
                    for delta in _chunk_deltas(chunk):
                        piece = _without_nul(delta)
                        if piece:
                            parts.append(piece)
                            yield piece
                    model = str(chunk.get("model") or model)
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
        except TimeoutError:
            raise LLMError("the model provider did not answer in time", retryable=True) from None
        except aiohttp.ClientError:
            raise LLMError("could not reach the model provider", retryable=True) from None
        text = _text("".join(parts))
        if not text:
            raise LLMError("the model returned empty content", retryable=True)
        yield Completion(content=text, model=_text(model), usage=usage)

    async def close(self) -> None:
        self._closed = True
        if self._http is not None:
            await self._http.close()
