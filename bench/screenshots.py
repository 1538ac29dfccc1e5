"""Screenshots of the web console for the README: `python bench/screenshots.py` (or
`make screenshots`).

Starts `smartgen dev` in a scratch directory (embedded Redis and SQLite, the offline
writer: no key, no network), signs a user up in Debian's Chromium (Playwright), queues a
few jobs, saves one, and writes `docs/console-<screen>-<width>.png` for each screen at a
desktop width (1280 px) and a phone's (375 px). Not part of `make test`."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
WIDTHS = {"desktop": (1280, 900), "phone": (375, 812)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(scratch: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENROUTER", "MONGO", "DATABASE_URL", "REDIS_URL", "JWT"))
    }
    env.update(
        PORT=str(port),
        DATA_DIR=str(scratch / "data"),
        GENERATION_DELAY_SECONDS="4",
        LOG_LEVEL="warning",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "smartgen", "dev"],
        env=env,
        cwd=scratch,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"smartgen dev exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not come up")


async def shoot(url: str, out: Path) -> list[Path]:
    from playwright.async_api import async_playwright, expect

    executable = next((b for b in BROWSERS if os.access(b, os.X_OK)), None)
    if executable is None:
        raise SystemExit("Chromium is not installed (apt-get install chromium)")
    written: list[Path] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            expect.set_options(timeout=30_000)

            async def snap(name: str, full: bool = False) -> None:
                for label, (width, height) in WIDTHS.items():
                    await page.set_viewport_size({"width": width, "height": height})
                    await page.wait_for_timeout(150)  # let the layout settle
                    path = out / f"console-{name}-{label}.png"
                    await page.screenshot(path=str(path), full_page=full)
                    written.append(path)
                await page.set_viewport_size({"width": 1280, "height": 900})

            await page.goto(url + "/")
            await expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
            await page.get_by_label("Email", exact=True).fill("ada@example.com")
            await snap("sign-in")
            await page.get_by_label("Password", exact=True).fill("correct horse battery")
            await page.get_by_role("button", name="Sign up", exact=True).click()
            await expect(page.locator("#who-email")).to_have_text("ada@example.com")

            prompt = page.get_by_label("Prompt", exact=True)
            for text, kind in (
                ("How to bake a sourdough bread at home", "Blog Post Outline"),
                ("A waterproof hiking backpack, 30 litres", "Product Description"),
            ):
                await prompt.fill(text)
                await page.get_by_label("Content type", exact=True).select_option(kind)
                await page.get_by_label("Start after (seconds)").fill("0")
                await page.get_by_role("button", name="Generate", exact=True).click()
            done = page.locator("#jobs li .badge-completed")
            await expect(done).to_have_count(2)
            await prompt.fill("Launch post for our autumn collection")
            await page.get_by_label("Content type", exact=True).select_option(
                "Social Media Caption"
            )
            await page.get_by_label("Tone").select_option("playful")
            await page.get_by_label("Start after (seconds)").fill("300")
            await page.get_by_role("button", name="Generate", exact=True).click()
            await expect(page.locator("#jobs li .countdown")).to_have_count(1)
            first = page.locator("#jobs li").filter(has_text="sourdough")
            await first.get_by_role("button", name="Open").click()
            await page.locator("#save-title").fill("Sourdough at home")
            await page.get_by_role("button", name="Save", exact=True).click()
            await expect(page.locator("#result-message")).to_contain_text("Saved")
            await page.get_by_role("button", name="Like", exact=True).click()
            await snap("generate", full=True)
            second = page.locator("#jobs li").filter(has_text="backpack")
            await second.get_by_role("button", name="Open").click()
            await page.locator("#save-title").fill("Trail backpack, 30 l")
            await page.get_by_role("button", name="Save", exact=True).click()
            await expect(page.locator("#result-message")).to_contain_text("Saved")

            await page.get_by_role("button", name="Library", exact=True).click()
            items = page.locator("#contents > li")
            if await page.locator("#library-tools").is_visible():
                await expect(items).to_have_count(2)
                item = items.filter(has_text="Sourdough")
                await item.get_by_role("button", name="Edit").click()
                await item.get_by_label("Tags").fill("bread, baking")
                await item.get_by_role("button", name="Save changes").click()
                await expect(item.locator(".tags li")).to_have_count(2)
                await item.locator("summary").click()
            await snap("library", full=True)
            await page.get_by_role("button", name="Usage", exact=True).click()
            await expect(page.locator("#usage-jobs")).to_have_text("3")
            await expect(page.locator("#usage-types tbody tr")).to_have_count(3)
            await snap("usage", full=True)
        finally:
            await browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="smartgen-shots-") as scratch:
        proc = start(Path(scratch), port)
        try:
            wait_up(url, proc)
            written = asyncio.run(shoot(url, args.out))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    for path in written:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
