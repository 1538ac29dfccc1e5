"""One HTTP attempt of a webhook delivery, to an address the SSRF rules passed.

The URL is checked and its host resolved again right before the attempt
(`addresses.check_url`), and the connection goes to that checked address: the request's
URL names the address, `Host` and the TLS server name (SNI, and so the certificate check)
name the host. Redirects are not followed (a 3xx is a failed attempt); connections are
not kept between attempts (one would be reused for another host at the same address). At
most RESPONSE_BYTES of the answer are read and kept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

import httpx

from smartgen.kit.outbound import CheckedUrl, Resolver, UrlRefused, check_url, system_resolver
from smartgen.webhooks.tasks import Answer

RESPONSE_BYTES: Final = 1024


class WebhookSender:
    def __init__(
        self,
        *,
        timeout: float,
        allow_http: bool,
        allow_private: bool,
        resolve: Resolver = system_resolver,
    ) -> None:
        self._timeout = timeout
        self._allow_http = allow_http
        self._allow_private = allow_private
        self._resolve = resolve
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: it would connect elsewhere
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_keepalive_connections=0, max_connections=1000),
        )

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        started = time.monotonic()

        def took() -> int:
            return round((time.monotonic() - started) * 1000)

        try:
            checked = await check_url(
                url,
                allow_http=self._allow_http,
                allow_private=self._allow_private,
                resolve=self._resolve,
            )
        except UrlRefused as refused:
            return Answer(None, None, took(), f"refused: {refused.reason}")
        try:
            async with asyncio.timeout(self._timeout):
                return await self._post(checked, headers, body, took)
        except TimeoutError:
            return Answer(None, None, took(), f"no answer within {self._timeout:g} s")
        except httpx.HTTPError as exc:
            return Answer(None, None, took(), f"{type(exc).__name__}: {exc}"[:300])

    async def _post(
        self, checked: CheckedUrl, headers: dict[str, str], body: bytes, took: Callable[[], int]
    ) -> Answer:
        address = checked.addresses[0]
        shown = f"[{address}]" if ":" in address else address
        default_port = 443 if checked.scheme == "https" else 80
        host = f"[{checked.host}]" if ":" in checked.host else checked.host
        if checked.port != default_port:
            host += f":{checked.port}"
        extensions = {}
        if checked.scheme == "https" and address != checked.host:
            extensions["sni_hostname"] = checked.host
        request = self._client.build_request(
            "POST",
            f"{checked.scheme}://{shown}:{checked.port}{checked.target}",
            content=body,
            headers={**headers, "host": host, "accept-encoding": "identity"},
            extensions=extensions,
        )
        response = await self._client.send(request, stream=True)
        try:
            kept = bytearray()
            async for chunk in response.aiter_raw():
                kept += chunk
                if len(kept) >= RESPONSE_BYTES:
                    break
        finally:
            await response.aclose()
        text = bytes(kept[:RESPONSE_BYTES]).decode("utf-8", "replace")
        return Answer(response.status_code, text, took())

    async def close(self) -> None:
        await self._client.aclose()
