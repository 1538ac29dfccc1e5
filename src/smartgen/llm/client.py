"""Client for OpenAI-compatible chat completions (OpenRouter, Ollama, llama.cpp, vLLM, …).

`complete()` returns one `Completion`; `stream()` yields text deltas then the final
`Completion`. Both share request building and error classification, so every caller
sees the same `LLMError` with `retryable` and `retry_after` set.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from smartgen.config import Settings
from smartgen.store.base import Completion

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


class LLMError(Exception):
    """A user-safe message (never the key, never a stack trace) and what to do next."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


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
    if not isinstance(content, str) or not content.strip():
        raise LLMError("the model returned empty content", retryable=True)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    return Completion(
        content=content.strip(), model=str(body.get("model") or fallback_model), usage=usage
    )


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


class ChatClient:
    """One pooled HTTP client per process; create it in the running loop, close on exit."""

    def __init__(self, settings: Settings, *, max_connections: int = 100) -> None:
        self.model = settings.openrouter_model
        self._settings = settings
        self._secret = settings.openrouter_key or None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if settings.openrouter_key:
            headers["Authorization"] = f"Bearer {settings.openrouter_key}"
        if settings.openrouter_referer:
            headers["HTTP-Referer"] = settings.openrouter_referer
        if settings.openrouter_title:
            headers["X-Title"] = settings.openrouter_title
        self._http = httpx.AsyncClient(
            base_url=settings.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(settings.llm_timeout_seconds, connect=10.0),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
        )

    def payload(self, messages: list[dict[str, str]], *, stream: bool = False) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": self._settings.llm_max_tokens,
            "temperature": self._settings.llm_temperature,
            "stream": stream,
        }

    async def complete(self, messages: list[dict[str, str]]) -> Completion:
        try:
            response = await self._http.post("chat/completions", json=self.payload(messages))
        except httpx.TimeoutException:
            raise LLMError("the model provider did not answer in time", retryable=True) from None
        except httpx.HTTPError:
            raise LLMError("could not reach the model provider", retryable=True) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            raise _status_error(
                response.status_code,
                body,
                parse_retry_after(response.headers.get("retry-after")),
                self._secret,
            )
        return _completion_from_body(body, self.model, self._secret)

    async def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str | Completion]:
        """Yield text deltas as they arrive, then the assembled `Completion` last."""
        parts: list[str] = []
        model = self.model
        usage: dict[str, Any] | None = None
        try:
            async with self._http.stream(
                "POST",
                "chat/completions",
                json=self.payload(messages, stream=True),
                headers={"Accept": "text/event-stream"},
            ) as response:
                if response.status_code != 200:
                    raw = await response.aread()
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                    raise _status_error(
                        response.status_code,
                        body,
                        parse_retry_after(response.headers.get("retry-after")),
                        self._secret,
                    )
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # comments (": OPENROUTER PROCESSING"), blank lines, ids
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        chunk = None
                    if isinstance(chunk, dict) and chunk.get("error"):
                        # raises the classified error
                        _completion_from_body(chunk, model, self._secret)
                    for delta in _chunk_deltas(chunk):
                        parts.append(delta)
                        yield delta
                    model = str(chunk.get("model") or model)
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
        except httpx.TimeoutException:
            raise LLMError("the model provider did not answer in time", retryable=True) from None
        except httpx.HTTPError:
            raise LLMError("could not reach the model provider", retryable=True) from None
        text = "".join(parts).strip()
        if not text:
            raise LLMError("the model returned empty content", retryable=True)
        yield Completion(content=text, model=model, usage=usage)

    async def close(self) -> None:
        await self._http.aclose()
