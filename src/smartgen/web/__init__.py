"""The web console: one page at `/`, its styles and ES modules under `/console/`, all from
the installed package (no build step, no CDN, no third-party code).

Every answer carries a strict Content-Security-Policy: scripts and styles from this origin
only (no inline script, no inline style), no plugins, no `<base>`, no framing, forms
posting only here. The page renders untrusted text (prompts, model output, titles) with
`textContent` or through `markdown.js`, which builds DOM nodes and never parses HTML."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from smartgen.config import Settings
from smartgen.models import CONTENT_TYPES, LENGTHS, TONES

ASSETS = "/console"
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_ROOT = files(__name__)


class ConsoleFiles(StaticFiles):
    """Starlette's static files with the console's security headers on every answer."""

    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        response.headers["Cache-Control"] = "no-cache"  # revalidate: ETag keeps it cheap
        return response


def _options(values: Sequence[str]) -> str:
    return "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)


def render_page(settings: Settings) -> str:
    """The page, with the choices this deployment offers (content types, tones, lengths,
    its ALLOWED_MODELS: the model field shows only when there is a choice)."""
    page = (_ROOT / "templates" / "index.html").read_text(encoding="utf-8")
    models = settings.models_allowed
    fills = {
        "content_types": _options(CONTENT_TYPES),
        "tones": _options(TONES),
        "lengths": _options(LENGTHS),
        "models": _options(models),
        "model_hidden": "" if len(models) > 1 else "hidden",
        "prompt_max": str(settings.prompt_max_chars),
        "default_delay": escape(f"{settings.generation_delay_seconds:g}"),
    }
    for name, value in fills.items():
        page = page.replace("{" + name + "}", value)
    return page


def install_console(app: FastAPI, settings: Settings) -> None:
    """Serve the console at `/` and its files under `/console/`."""
    router = APIRouter(include_in_schema=False)
    page = render_page(settings)

    @router.get("/")
    async def console() -> HTMLResponse:
        return HTMLResponse(page, headers={**HEADERS, "Cache-Control": "no-cache"})

    app.include_router(router)
    app.mount(ASSETS, ConsoleFiles(directory=str(_ROOT / "static")), name="console")
