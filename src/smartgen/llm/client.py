"""Client for OpenAI-compatible chat completions (OpenRouter, Ollama, llama.cpp, vLLM, …).

`complete()` returns one `Completion`; `stream()` yields text deltas then the final
`Completion`. Both share request building and error classification, so every caller
sees the same `LLMError` with `retryable` and `retry_after` set.

It runs on one pooled `aiohttp.ClientSession`, not httpx: httpx's pool does work in
proportion to its pooled connections on every request, which left a busy worker short of
CPU (`bench/HISTORY.md`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from smartgen.config import Settings
from smartgen.kit import jsoncodec, logcontext
from smartgen.llm import answers
from smartgen.llm.answers import Redactor
from smartgen.llm.bodies import error_body, lines_of, read_capped, refuse_compression, sse_lines
from smartgen.llm.errors import RETRYABLE_STATUS, LLMError
from smartgen.models import Completion, ModelRequest


def parse_retry_after(value: str | None, cap: float = 3600.0) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), at most `cap`."""
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
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, cap))


def _error_message(body: Any, redact: Redactor) -> str | None:
    text: str | None = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
            text = str(msg) if msg else None
        elif isinstance(err, str):
            text = err
    if not text:
        return None
    # One line of printable text: it ends up in logs, in the job's `error` and on screens.
    text = " ".join(answers.without_surrogates(text[:2000]).split())
    text = "".join(c if c.isprintable() else "?" for c in text)
    # Some providers quote the key they refused: never pass it on.
    return redact(text)[:300] or None


def _status_error(status: int, body: Any, retry_after: float | None, redact: Redactor) -> LLMError:
    detail = _error_message(body, redact)
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


def _raise_reported_error(body: dict[str, Any], redact: Redactor) -> None:
    """OpenRouter reports some upstream failures as an `error` object inside a 200."""
    err = body["error"]
    status = answers.error_code(err.get("code") if isinstance(err, dict) else None)
    retryable = status is None or status in RETRYABLE_STATUS or status >= 500
    detail = _error_message(body, redact) or "unknown error"
    raise LLMError(
        f"the model provider reported an error: {detail}", retryable=retryable, status=status
    )


def _completion_from_body(
    body: Any, fallback_model: str, redact: Redactor, max_chars: int
) -> Completion:
    if not isinstance(body, dict):
        raise LLMError(answers.MALFORMED, retryable=True)
    if body.get("error"):
        _raise_reported_error(body, redact)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMError("the model provider sent an answer without choices", retryable=True)
    message = choices[0].get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    text = _text(content) if isinstance(content, str) else ""
    if not text:
        raise LLMError("the model returned empty content", retryable=True)
    finish = answers.finish_reason(choices[0])
    # Capped before redacting (a key cut in two still leaves a fragment long enough to
    # find), so that an oversized answer costs no more than a capped one.
    text, cut = _capped(text, max_chars)
    text = redact(text)
    return Completion(
        content=text,
        model=answers.model_name(body.get("model"), fallback_model, redact),
        usage=answers.usage(body.get("usage")),
        finish_reason="length" if cut else finish,
    )


def _capped(text: str, max_chars: int) -> tuple[str, bool]:
    """`text` cut to `max_chars` (a provider that ignores max_tokens), and whether it was."""
    if len(text) <= max_chars:
        return text, False
    return text[:max_chars].rstrip(), True


JOB_HEADER = "X-Smartgen-Job-Id"


def job_headers(base: dict[str, str] | None = None) -> dict[str, str] | None:
    """`base` plus the id of the job being generated (`X-Smartgen-Job-Id`), so that a
    gateway's or a local server's logs can be followed back to the job."""
    job_id = logcontext.job_id.get()
    if not job_id:
        return base
    return {**(base or {}), JOB_HEADER: job_id}


def _without_nul(value: str) -> str:
    """Model text without NUL characters (PostgreSQL cannot store them, and they carry
    nothing a reader sees); a lone surrogate makes the answer malformed."""
    return answers.check_text(value)


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


def _stream_finish(chunk: dict[str, Any]) -> str | None:
    """The `finish_reason` a stream chunk gives, if any (the last chunk usually does)."""
    choices = chunk.get("choices") or []
    reasons = [answers.finish_reason(c) for c in choices]
    return next((r for r in reasons if r), None)


class ChatClient:
    """One pooled HTTP session per process; use it in the running loop, close on exit."""

    def __init__(self, settings: Settings, *, max_connections: int = 100) -> None:
        self.model = settings.openrouter_model
        self._settings = settings
        self._redact = Redactor(settings.openrouter_key or None)
        self._max_bytes = settings.llm_max_response_bytes
        self._max_chars = answers.content_limit(settings.llm_max_tokens)
        self._retry_after_cap = settings.retry_after_max_seconds
        self._stream_seconds = settings.stream_max_seconds
        self._url = settings.base_url + "/chat/completions"
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            # Never compressed: a small gzip body can unpack to gigabytes (a "gzip bomb").
            "Accept-Encoding": "identity",
        }
        if settings.openrouter_key:
            headers["Authorization"] = f"Bearer {settings.openrouter_key}"
        if settings.openrouter_referer:
            headers["HTTP-Referer"] = settings.openrouter_referer
        if settings.openrouter_title:
            headers["X-Title"] = settings.openrouter_title
        self._headers = headers
        self._max_connections = max_connections
        # The whole call of `complete()` ends within LLM_TIMEOUT_SECONDS (the job's lease
        # assumes it); a stream may run longer as long as the provider keeps sending, up to
        # LLM_STREAM_MAX_SECONDS in all.
        self._timeout = aiohttp.ClientTimeout(total=settings.llm_timeout_seconds, connect=10)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=self._stream_seconds, connect=10, sock_read=settings.llm_timeout_seconds
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
                auto_decompress=False,
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
                status = response.status
                retry_after = response.headers.get("Retry-After")
                if status != 200:
                    body = await error_body(response)
                    raise _status_error(status, body, self._retry_after(retry_after), self._redact)
                raw = await read_capped(response, self._max_bytes)
        except TimeoutError:
            raise LLMError("the model provider did not answer in time", retryable=True) from None
        except aiohttp.ClientError:
            raise LLMError("could not reach the model provider", retryable=True) from None
        return _completion_from_body(answers.loads(raw), model, self._redact, self._max_chars)

    def _retry_after(self, value: str | None) -> float | None:
        return parse_retry_after(value, self._retry_after_cap)

    async def generate(self, request: ModelRequest) -> Completion:
        return await self.complete(request.messages, request=request)

    def generate_stream(self, request: ModelRequest) -> AsyncIterator[str | Completion]:
        return self.stream(request.messages, request=request)

    async def stream(
        self, messages: list[dict[str, str]], *, request: ModelRequest | None = None
    ) -> AsyncIterator[str | Completion]:
        """Yield text deltas as they arrive, then the assembled `Completion` last."""
        session = self._session()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stream_seconds
        parts: list[str] = []
        length = 0
        cut = False
        finish: str | None = None
        model_value: Any = None
        usage: Any = None
        model = (request.model if request else None) or self.model
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
                    body = await error_body(response)
                    raise _status_error(
                        response.status,
                        body,
                        self._retry_after(response.headers.get("Retry-After")),
                        self._redact,
                    )
                refuse_compression(response)
                if "text/event-stream" not in response.headers.get("Content-Type", ""):
                    # Not labelled as a stream: a provider that answers a stream request
                    # with one whole JSON answer, or a stream under another label.
                    raw = await read_capped(response, self._max_bytes)
                    body = answers.loads(raw)
                    if isinstance(body, dict):
                        whole = _completion_from_body(body, model, self._redact, self._max_chars)
                        yield whole.content
                        yield whole
                        return
                    lines: AsyncIterator[str] = lines_of(raw)
                else:
                    lines = sse_lines(response.content, self._max_bytes)
                async for line in lines:
                    if loop.time() > deadline:
                        raise TimeoutError
                    if not line.startswith("data:"):
                        continue  # comments (": OPENROUTER PROCESSING"), blank lines, ids
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = answers.loads(data)
                    if isinstance(chunk, dict) and chunk.get("error"):
                        _raise_reported_error(chunk, self._redact)
                    for delta in _chunk_deltas(chunk):
                        piece = self._redact(_without_nul(delta))
                        if length + len(piece) > self._max_chars:
                            piece, cut = piece[: self._max_chars - length], True
                        if piece:
                            parts.append(piece)
                            length += len(piece)
                            yield piece
                    if cut:
                        break  # a provider that ignores max_tokens: keep what fits
                    finish = _stream_finish(chunk) or finish
                    model_value = chunk.get("model") or model_value
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
        except TimeoutError:
            if loop.time() >= deadline - 0.01:
                raise LLMError(
                    "the model's answer did not end within "
                    f"{self._stream_seconds:g} s (LLM_STREAM_MAX_SECONDS)",
                    retryable=True,
                ) from None
            raise LLMError("the model provider did not answer in time", retryable=True) from None
        except aiohttp.ClientError:
            raise LLMError("could not reach the model provider", retryable=True) from None
        text = self._redact(_text("".join(parts)))
        if not text:
            raise LLMError("the model returned empty content", retryable=True)
        yield Completion(
            content=text,
            model=answers.model_name(model_value, model, self._redact),
            usage=answers.usage(usage),
            finish_reason="length" if cut else finish,
        )

    async def close(self) -> None:
        self._closed = True
        if self._http is not None:
            await self._http.close()
