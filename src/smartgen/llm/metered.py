"""A `ports.Generator` that times and counts each model call of the one it wraps: latency
by model, errors by kind, tokens and cost as the provider reports them (`usage`; cost is
OpenRouter's `usage.cost`, in USD credits). Labelled by the model the job asked for (one of
ALLOWED_MODELS, so the labels stay few), else the configured one, so that latency, errors,
tokens and cost of one model line up."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from smartgen.llm.errors import RETRYABLE_STATUS, LLMError
from smartgen.metrics import catalog
from smartgen.models import Completion, ModelRequest
from smartgen.ports import Generator


def error_kind(exc: LLMError) -> str:
    """rate_limited, server_error, timeout, unreachable, refused or malformed.

    The client raises its `LLMError`s inside the `except` that caught the transport's
    error, so a timeout or a refused connection is still there as the error's context."""
    status = exc.status
    if status == 429:
        return "rate_limited"
    if status is not None:
        if status >= 500 or status in RETRYABLE_STATUS:
            return "server_error"
        return "refused"
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, TimeoutError):
        return "timeout"
    if isinstance(cause, OSError | aiohttp.ClientError):
        return "unreachable"
    return "malformed"


def record_usage(model: str, usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    for kind in ("prompt", "completion"):
        count = usage.get(f"{kind}_tokens")
        if isinstance(count, int | float) and not isinstance(count, bool) and count > 0:
            catalog.child(catalog.LLM_TOKENS, model, kind).inc(count)
    cost = usage.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and cost > 0:
        catalog.child(catalog.LLM_COST, model).inc(cost)


class MeteredGenerator:
    """Wraps a generator (the HTTP client, the offline writer) and closes it with itself."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.model = inner.model

    def _label(self, request: ModelRequest) -> str:
        # The offline writer answers whatever model a job names.
        if request.model and not self.model.startswith("offline/"):
            return request.model
        return self.model

    async def generate(self, request: ModelRequest) -> Completion:
        model = self._label(request)
        started = time.perf_counter()
        try:
            completion = await self.inner.generate(request)
        except LLMError as exc:
            catalog.child(catalog.LLM_DURATION, model).observe(time.perf_counter() - started)
            catalog.child(catalog.LLM_ERRORS, model, error_kind(exc)).inc()
            raise
        catalog.child(catalog.LLM_DURATION, model).observe(time.perf_counter() - started)
        record_usage(model, completion.usage)
        return completion

    async def generate_stream(self, request: ModelRequest) -> AsyncIterator[str | Completion]:
        model = self._label(request)
        started = time.perf_counter()
        try:
            async for piece in self.inner.generate_stream(request):
                if isinstance(piece, Completion):
                    catalog.child(catalog.LLM_DURATION, model).observe(
                        time.perf_counter() - started
                    )
                    record_usage(model, piece.usage)
                yield piece
        except LLMError as exc:
            catalog.child(catalog.LLM_DURATION, model).observe(time.perf_counter() - started)
            catalog.child(catalog.LLM_ERRORS, model, error_kind(exc)).inc()
            raise

    async def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()
