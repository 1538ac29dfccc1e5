"""Model prices for quotes: OpenRouter's `GET /models` (USD per token, as strings), asked
at most once per MODEL_PRICES_CACHE_SECONDS per process; MODEL_PRICES wins over it.

A price list that cannot be fetched is not an error: the quote says "unknown" (null) and
the list is asked for again after a minute, never on every request."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from smartgen.config import Settings
from smartgen.kit import jsoncodec
from smartgen.ports import ModelPrice

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE = 60.0  # seconds before asking again after a failed fetch
FETCH_TIMEOUT = 5.0


def parse_prices(body: Any) -> dict[str, ModelPrice]:
    """`{"data": [{"id", "pricing": {"prompt", "completion"}}]}` → prices; entries of
    another shape are skipped."""
    out: dict[str, ModelPrice] = {}
    data = body.get("data") if isinstance(body, dict) else None
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        pricing = entry.get("pricing")
        if not isinstance(pricing, dict):
            continue
        try:
            prompt = float(pricing.get("prompt", 0) or 0)
            completion = float(pricing.get("completion", 0) or 0)
        except (TypeError, ValueError):
            continue
        if prompt >= 0 and completion >= 0:  # OpenRouter marks variable prices with -1
            out[entry["id"]] = ModelPrice(prompt=prompt, completion=completion)
    return out


class ModelPrices:
    """`ports.Prices` from settings and the provider's price list."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._fixed = {
            model: ModelPrice(prompt=p.get("prompt", 0.0), completion=p.get("completion", 0.0))
            for model, p in settings.model_prices.items()
        }
        self._listed: dict[str, ModelPrice] = {}
        self._next_fetch = 0.0
        self._lock = asyncio.Lock()
        self._headers = {"Accept": "application/json"}
        if settings.openrouter_key:
            self._headers["Authorization"] = f"Bearer {settings.openrouter_key}"

    async def price(self, model: str) -> ModelPrice | None:
        if model in self._fixed:
            return self._fixed[model]
        if time.monotonic() >= self._next_fetch:
            async with self._lock:
                if time.monotonic() >= self._next_fetch:
                    await self._refresh()
        return self._listed.get(model)

    async def _refresh(self) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
            async with (
                aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session,
                session.get(
                    self._settings.base_url + "/models",
                    allow_redirects=False,
                    proxy=self._settings.llm_proxy,
                ) as response,
            ):
                raw = await response.read()
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
            self._listed = parse_prices(jsoncodec.loads(raw))
            self._next_fetch = time.monotonic() + self._settings.model_prices_cache_seconds
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("model prices not fetched: %s", exc)
            self._next_fetch = time.monotonic() + RETRY_AFTER_FAILURE
