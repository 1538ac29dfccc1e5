"""The web console in a real browser (issue 16): Debian's Chromium through Playwright
against real `smartgen api` + `smartgen worker` processes and the fake LLM, every request
to another host refused. One walk through what a user does, failing on any dialog (an
injected `alert`), uncaught error or console error (a script or style the page's
Content-Security-Policy blocked):

sign up (a 422 shown beside its field), generate (the countdown, the text streaming in),
edit and cancel a queued job, run one due later now, open the result and save it, a
hostile prompt and a hostile model answer rendered as text, the library (search, edit,
export, delete: when the API has it), usage, sign out and in again, a reload kept signed in
by the refresh cookie, a second user who sees none of it, and the page at a phone's width.

Without Playwright or a browser the test is skipped on a developer's machine and fails in
CI (`CI=true`), where `.ci/run` installs both."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Process, start_system
from tests.fakellm import FakeLLM, Reply
from tests.test_docs_browser import browser_path, missing

WAIT = 20_000  # ms: the longest any one step may take
# A model answer that tries everything a page could be tricked into running.
HOSTILE_ANSWER = (
    "# Result <script>alert('script')</script>\n\n"
    "<img src=x onerror=alert('img')> and [a link](javascript:alert('link')) and "
    "[a fine link](https://example.com/ok) and <a href=\"javascript:alert('a')\">a</a>\n\n"
    "- item <svg onload=alert('svg')>\n"
)
# Chromium reports every 4xx/5xx answer to fetch() as a console error; the 4xx the page
# expects (a refresh with no session yet, a 422 it shows beside a field) are not failures.
# Renders each input with the console's own module: [input, innerHTML, link targets,
# every attribute name on the elements it made].
MARKDOWN_CASES = """async () => {
  const { renderMarkdown } = await import("./console/markdown.js");
  const inputs = [
    "# Title\\n\\n- **bold** and *em* and `code`",
    "[ok](https://example.com/a?b=1)",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](data:text/html,x)",
    "<script>alert(1)</script>",
    "**<img src=x onerror=alert(1)>** _<svg onload=alert(1)>_",
    "```\\n<script>alert(1)</script>\\n```",
    "> <iframe src=javascript:alert(1)>",
    "[a](https://x.example/\\"onmouseover=\\"alert(1))",
  ];
  return inputs.map((text) => {
    const box = document.createElement("div");
    renderMarkdown(box, text);
    const all = [...box.querySelectorAll("*")];
    return [
      text,
      box.innerHTML,
      [...box.querySelectorAll("a")].map((a) => a.href),
      all.flatMap((node) => [...node.attributes].map((a) => a.name)),
    ];
  });
}"""
# WCAG 2 contrast of every visible element's own text against the background it sits on
# (the nearest opaque one up its ancestors): [text, ratio, needed] for each shortfall.
LOW_CONTRAST = """() => {
  const rgb = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => {
    const f = (c) => ((c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (node) => {
    for (; node; node = node.parentElement) {
      const c = rgb(getComputedStyle(node).backgroundColor);
      if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const short = [];
  for (const node of document.querySelectorAll("body *")) {
    const own = [...node.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !node.checkVisibility()) continue;
    const style = getComputedStyle(node);
    const [a, b] = [luminance(rgb(style.color)), luminance(background(node))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    const needed = large ? 3 : 4.5;
    if (ratio < needed) short.push([node.textContent.trim().slice(0, 40), ratio, needed]);
  }
  return short;
}"""
EXPECTED_4XX = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")


@pytest.fixture
async def console_url(
    env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> str:
    _, _, url = await start_system(env, processes)
    return url


def offline(refused: list[str]) -> Any:
    async def route(route: Any) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            await route.continue_()
        else:
            refused.append(route.request.url)
            await route.abort("internetdisconnected")

    return route


async def library_api(url: str) -> bool:
    """Whether this API has the content library (GET /contents with a cursor page)."""
    async with httpx.AsyncClient(base_url=url) as client:
        email = f"probe-{uuid.uuid4().hex[:8]}@example.com"
        r = await client.post("/auth/register", json={"email": email, "password": "probe pass"})
        r = await client.get(
            "/contents?limit=1", headers={"Authorization": f"Bearer {r.json()['token']}"}
        )
        return r.status_code == 200 and isinstance(r.json(), dict)


# The console depends on the API, not on the store (every store is covered by the API's
# own tests); SQLite needs no server and searches with FTS5.
@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_console_end_to_end(console_url: str, fake_llm: FakeLLM, unique: str) -> None:
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        missing("Playwright for Python is not installed")
    executable = browser_path()
    if executable is None:
        missing("Chromium is not installed")
    slow, hostile = f"[slow-{unique}]", f"[hostile-{unique}]"
    fake_llm.always(slow, Reply(chunk_delay=0.2))
    fake_llm.always(hostile, Reply(content=HOSTILE_ANSWER))
    with_library = await library_api(console_url)

    refused: list[str] = []
    problems: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1280, "height": 900}, accept_downloads=True
            )
            await context.grant_permissions(["clipboard-read", "clipboard-write"])
            page = await context.new_page()
            await page.route("**/*", offline(refused))

            async def on_dialog(dialog: Any) -> None:
                problems.append(f"dialog: {dialog.message}")
                await dialog.dismiss()

            page.on("dialog", on_dialog)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console: {msg.text}")
                    if msg.type == "error" and not EXPECTED_4XX.match(msg.text)
                    else None
                ),
            )
            expect.set_options(timeout=WAIT)
            await page.goto(console_url + "/")

            await expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
            assert await page.evaluate(LOW_CONTRAST) == []

            # --- the Markdown renderer on its own: hostile inputs stay text -----------
            rendered = await page.evaluate(MARKDOWN_CASES)
            for _, html, hrefs, attributes in rendered:
                assert "<script" not in html and "<img" not in html and "<svg" not in html, html
                assert "<iframe" not in html, html
                assert set(attributes) <= {"href", "rel"}, (html, attributes)
                assert all(h.startswith(("https:", "http:", "mailto:")) for h in hrefs), hrefs
            by_text = {text: (html, hrefs) for text, html, hrefs, _ in rendered}
            assert by_text["# Title\n\n- **bold** and *em* and `code`"][0] == (
                "<h3>Title</h3><ul><li><strong>bold</strong> and <em>em</em> and "
                "<code>code</code></li></ul>"
            )
            assert by_text["[ok](https://example.com/a?b=1)"][1] == ["https://example.com/a?b=1"]
            for bad in ("javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x"):
                html, hrefs = by_text[f"[x]({bad})"]
                assert hrefs == [] and bad in html, (bad, html)
            assert by_text["<script>alert(1)</script>"][0] == (
                "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
            )

            # --- sign up: the API's 422 beside the field it names ---------------------
            email = f"ada-{unique}@example.com"
            await page.get_by_label("Email", exact=True).fill(email)
            await page.get_by_label("Password", exact=True).fill("short")
            await page.get_by_role("button", name="Sign up", exact=True).click()
            password = page.get_by_label("Password", exact=True)
            await expect(password).to_have_attribute("aria-invalid", "true")
            await expect(password).to_have_accessible_description(re.compile("at least 8"))
            await password.fill("correct horse")
            await page.get_by_role("button", name="Sign up", exact=True).click()
            await expect(page.locator("#who-email")).to_have_text(email)

            # --- generate: the 422 for a missing prompt, then a job that counts down
            # and streams its text ----------------------------------------------------
            await page.get_by_role("button", name="Generate", exact=True).click()
            prompt = page.get_by_label("Prompt", exact=True)
            await expect(prompt).to_have_attribute("aria-invalid", "true")
            await expect(prompt).to_have_accessible_description(re.compile("required"))
            await prompt.fill(f"Sourdough for beginners {slow}")
            await page.get_by_label("Content type", exact=True).select_option("Blog Post Outline")
            await page.get_by_label("Start after (seconds)").fill("5")
            await page.get_by_role("button", name="Generate", exact=True).click()
            created = page.locator("#jobs li").filter(has_text="Sourdough for beginners")
            first = page.locator(f"#job-{await created.get_attribute('data-job-id')}")
            countdown = first.locator(".countdown")
            await expect(countdown).to_have_text(re.compile(r"Starts in [2-5] s"))
            shown = await countdown.inner_text()
            await expect(countdown).to_have_text(re.compile(r"Starts in \d s|Starting"))
            await expect(countdown).not_to_have_text(shown)  # it counts down
            await expect(prompt).not_to_have_attribute("aria-invalid", "true")
            # The text arrives while the job is still processing (0.2 s a word).
            await expect(first.locator(".badge")).to_have_text("processing")
            await expect(first.locator(".live-text")).to_contain_text("Outline")
            await expect(first.locator(".badge")).to_have_text("completed")

            # --- edit, then cancel, a queued job -------------------------------------
            await prompt.fill(f"A job to change {unique}")
            await page.get_by_label("Start after (seconds)").fill("600")
            await page.get_by_role("button", name="Generate", exact=True).click()
            queued = page.locator("#jobs li").filter(has_text="A job to change")
            await expect(queued.locator(".badge")).to_have_text("queued")
            await queued.get_by_role("button", name="Edit", exact=True).click()
            await queued.get_by_label("Edit prompt").fill(f"A job to cancel {unique}")
            await queued.get_by_role("button", name="Save changes").click()
            cancel = page.locator("#jobs li").filter(has_text="A job to cancel")
            await expect(cancel.locator(".prompt-line")).to_have_text(f"A job to cancel {unique}")
            await cancel.get_by_role("button", name="Cancel", exact=True).click()
            await expect(cancel.locator(".badge")).to_have_text("cancelled")
            await expect(cancel.get_by_role("button", name="Retry")).to_be_visible()

            # --- run a job due in ten minutes now --------------------------------------
            await prompt.fill(f"A job to run now {unique}")
            await page.get_by_label("Start after (seconds)").fill("600")
            await page.get_by_role("button", name="Generate", exact=True).click()
            later = page.locator("#jobs li").filter(has_text="A job to run now")
            await expect(later.locator(".badge")).to_have_text("queued")
            await expect(later.locator(".countdown")).to_have_text(re.compile(r"Starts in"))
            await later.get_by_role("button", name="Run now", exact=True).click()
            await expect(later.locator(".badge")).to_have_text("completed", timeout=30_000)
            await expect(later.get_by_role("button", name="Run now")).to_have_count(0)

            # --- the result: Markdown rendered, copied, saved with a title --------------
            await first.get_by_role("button", name="Open").click()
            result = page.locator("#result")
            await expect(result.locator("h3")).to_contain_text("Outline: Sourdough")
            await result.get_by_role("button", name="Copy").click()
            await expect(page.locator("#result-message")).to_have_text(re.compile("Copied"))
            copied = await page.evaluate("navigator.clipboard.readText()")
            assert copied.startswith("# Outline: Sourdough for beginners"), copied
            await result.get_by_label("Title").fill(f"Sourdough guide {unique}")
            await result.get_by_role("button", name="Save", exact=True).click()
            await expect(page.locator("#result-message")).to_contain_text("Saved")
            like = result.get_by_role("button", name="Like", exact=True)
            await like.click()
            if with_library:  # the API has feedback
                await expect(like).to_have_attribute("aria-pressed", "true")
            else:
                await expect(page.locator("#result-message")).to_contain_text("not available")
            # Another take: a variation of it, queued and run like any job.
            await result.get_by_role("button", name="Another take").click()
            take = page.locator("#jobs li").filter(has_text="another take")
            await expect(take.locator(".badge")).to_have_text("completed")

            # --- hostile text: a prompt with markup, an answer with scripts -------------
            await page.get_by_label("Start after (seconds)").fill("0")
            await prompt.fill(f"<img src=x onerror=alert(1)> {hostile}")
            await page.get_by_role("button", name="Generate", exact=True).click()
            evil = page.locator("#jobs li").filter(has_text="<img src=x onerror=alert(1)>")
            await expect(evil.locator(".badge")).to_have_text("completed")
            await expect(evil.locator(".prompt-line")).to_have_text(
                f"<img src=x onerror=alert(1)> {hostile}"
            )
            await evil.get_by_role("button", name="Open").click()
            body = page.locator("#result-body")
            await expect(body.locator("h3")).to_have_text("Result <script>alert('script')</script>")
            await expect(body).to_contain_text("<img src=x onerror=alert('img')>")
            assert await body.locator("script, img, svg, iframe, [onerror], [onload]").count() == 0
            hrefs = await body.locator("a").evaluate_all("(as) => as.map((a) => a.href)")
            assert hrefs == ["https://example.com/ok"], hrefs  # javascript: stays text
            await expect(page.locator("#result-prompt")).to_have_text(
                f"<img src=x onerror=alert(1)> {hostile}"
            )
            assert await page.evaluate(LOW_CONTRAST) == []  # badges, buttons, text
            await result.get_by_label("Title").fill(f"<b>bold</b> {unique}")
            await result.get_by_role("button", name="Save", exact=True).click()
            await expect(page.locator("#result-message")).to_contain_text("Saved")

            # --- the library --------------------------------------------------------
            await page.get_by_role("button", name="Library", exact=True).click()
            if with_library:
                search = page.get_by_label("Search", exact=True)
                await search.fill("Sourdough")
                await page.get_by_role("button", name="Find").click()
                items = page.locator("#contents > li")
                await expect(items).to_have_count(1)
                saved = items.first
                await expect(saved.locator("h2")).to_have_text(f"Sourdough guide {unique}")
                await saved.get_by_role("button", name="Edit").click()
                await saved.get_by_label("Title").fill(f"Sourdough, edited {unique}")
                await saved.get_by_label("Tags").fill("bread, baking")
                await saved.get_by_role("button", name="Save changes").click()
                await expect(saved.locator("h2")).to_have_text(f"Sourdough, edited {unique}")
                await expect(saved.locator(".tags li")).to_have_text(["bread", "baking"])
                async with page.expect_download() as download_info:
                    await page.get_by_role("button", name="Export Markdown").click()
                download = await download_info.value
                exported = (await download.path()).read_text()
                assert f"Sourdough, edited {unique}" in exported, exported[:500]
                await search.fill("")
                await page.get_by_role("button", name="Find").click()
                hostile_item = items.filter(has_text="<b>bold</b>")
                await expect(hostile_item.locator("h2")).to_have_text(f"<b>bold</b> {unique}")
                await hostile_item.get_by_role("button", name="Delete").click()
                await hostile_item.get_by_role("button", name="Yes, delete").click()
                await expect(items).to_have_count(1)
            else:  # the API of this branch: the library says what is missing
                await expect(page.locator("#library-message")).to_contain_text("no content library")

            # --- usage --------------------------------------------------------------
            await page.get_by_role("button", name="Usage", exact=True).click()
            await expect(page.locator("#usage-jobs")).to_have_text("5")
            await expect(page.locator("#usage-tokens")).not_to_have_text("0")
            assert await page.evaluate(LOW_CONTRAST) == []
            types = page.locator("#usage-types tbody tr")
            await expect(
                types.filter(has_text="Blog Post Outline").locator("td").first
            ).to_have_text("5")
            if with_library:
                await expect(types.filter(has_text="Blog Post Outline")).to_contain_text(
                    "100 % (1)"
                )

            # --- sign out, in again; a reload keeps the session (refresh cookie) -------
            await page.get_by_role("button", name="Sign out").click()
            await expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
            await expect(page.locator("#jobs li")).to_have_count(0)
            # By keyboard alone: type, Tab to the password, Enter signs in.
            await page.get_by_label("Email", exact=True).focus()
            await page.keyboard.type(email)
            await page.keyboard.press("Tab")
            await page.keyboard.type("correct horse")
            await page.keyboard.press("Enter")
            await expect(first.locator(".badge")).to_have_text("completed")
            await page.reload()
            await expect(page.locator("#who-email")).to_have_text(email)
            await expect(page.locator("#jobs li")).to_have_count(5)
            # A second tab joins the session (the tabs take turns spending the cookie, so
            # neither looks like a stolen copy), and leaves it when the first signs out.
            tab = await context.new_page()
            await tab.route("**/*", offline(refused))
            tab.on("dialog", on_dialog)
            tab.on("pageerror", lambda exc: problems.append(f"tab error: {exc}"))
            await tab.goto(console_url + "/")
            await expect(tab.locator("#who-email")).to_have_text(email)
            await page.reload()  # one more refresh with the cookie the tab rotated
            await expect(page.locator("#who-email")).to_have_text(email)

            # --- a second user sees none of it ---------------------------------------
            await page.get_by_role("button", name="Sign out").click()
            await expect(tab.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
            await tab.close()
            await page.get_by_label("Email", exact=True).fill(f"bob-{unique}@example.com")
            await page.get_by_label("Password", exact=True).fill("another horse")
            await page.get_by_role("button", name="Sign up", exact=True).click()
            await expect(page.locator("#who-email")).to_have_text(f"bob-{unique}@example.com")
            await expect(page.locator("#jobs-empty")).to_be_visible()
            await expect(page.locator("#jobs li")).to_have_count(0)
            await page.get_by_role("button", name="Library", exact=True).click()
            if with_library:
                await expect(page.locator("#library-empty")).to_be_visible()
                await expect(page.locator("#contents > li")).to_have_count(0)

            # --- a phone's width: nothing wider than the screen -----------------------
            await page.get_by_role("button", name="Create", exact=True).click()
            await page.set_viewport_size({"width": 375, "height": 800})
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, width
        finally:
            await browser.close()
    assert refused == [], refused
    assert problems == [], problems
