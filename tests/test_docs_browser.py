"""`/docs` renders its operations in a real browser with no network but loopback (issue 21,
item 11): Chromium (Debian's, through Playwright) against a real `smartgen api` process,
every request to another host refused, as on an offline machine.

Without Playwright or a browser the test is skipped on a developer's machine and fails in
CI (`CI=true`), where `.ci/run` installs both."""

from __future__ import annotations

import os
import shutil
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Process, free_port, wait_http

BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def browser_path() -> str | None:
    for path in (*BROWSERS, shutil.which("chromium") or ""):
        if path and os.access(path, os.X_OK):
            return path
    return None


def missing(what: str) -> None:
    message = f"{what} (`.ci/run` installs it: apt-get install chromium; pip install playwright)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def api_url(env: dict[str, str], processes: list[Process]) -> str:
    port = free_port()
    api = Process("api", env, PORT=str(port))
    processes.append(api)
    url = f"http://127.0.0.1:{port}"
    await wait_http(url, api)
    return url


async def test_docs_render_the_operations_offline(api_url: str) -> None:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("Playwright for Python is not installed")
    executable = browser_path()
    if executable is None:
        missing("Chromium is not installed")

    refused: list[str] = []

    async def offline(route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            await route.continue_()
        else:
            refused.append(route.request.url)
            await route.abort("internetdisconnected")

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            await page.route("**/*", offline)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # A script or style the page's Content-Security-Policy blocks is a console error.
            page.on(
                "console",
                lambda msg: errors.append(msg.text) if msg.type == "error" else None,
            )
            await page.goto(api_url + "/docs")
            # Swagger UI draws one block per operation once it has read /openapi.json.
            await page.wait_for_selector(".opblock", timeout=60_000)
            summaries = await page.locator(".opblock-summary-path").all_inner_texts()
            methods = await page.locator(".opblock-summary-method").all_inner_texts()
            assert "/generate-content" in summaries, summaries
            assert "/auth/login" in summaries, summaries
            assert {"GET", "POST"} <= set(methods), methods
            assert len(summaries) >= 8
            assert refused == [], refused  # nothing was asked of another host
            assert errors == [], errors
        finally:
            await browser.close()


async def test_docs_assets_come_from_the_api_itself(api_url: str) -> None:
    async with httpx.AsyncClient(base_url=api_url) as client:
        r = await client.get("/docs")
        page = r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "cdn" not in page.lower() and "http://" not in page and "https://" not in page
        assert "<script>" not in page  # no inline script: a strict CSP keeps working
        for path in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
            r = await client.get(path)
            assert r.status_code == 200 and len(r.content) > 10_000, path
        assert (await client.get("/docs/start.js")).status_code == 200
        assert (await client.get("/docs/assets/../../../etc/passwd")).status_code == 404
        assert (await client.get("/redoc")).status_code == 404
