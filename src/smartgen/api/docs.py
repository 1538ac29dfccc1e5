"""`/docs`: Swagger UI served from the installed `swagger-ui-bundle-v2` package, never a CDN.

FastAPI's own `/docs` page loads Swagger UI's script and styles from a public CDN, so on an
offline or locked-down network it is a blank page. Here the page, its assets and the
script that starts Swagger UI are all served by the API itself, and the page has no inline
script (a Content-Security-Policy of `script-src 'self'` keeps working). ReDoc has no
package on PyPI to serve it from, so `/redoc` is not served.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"
# The page's own policy: its scripts and data from the API only; Swagger UI draws icons as
# data: images and sets style attributes, nothing else inline.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{root}{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{root}{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{root}{openapi}"></div>
<script src="{root}{assets}/swagger-ui-bundle.js"></script>
<script src="{root}/docs/start.js"></script>
</body>
</html>
"""

_START = """"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();
"""


def install_docs(app: FastAPI) -> None:
    """Serve `/docs` (and its assets under `/docs/assets`) from the installed package; the
    app must be created with `docs_url=None, redoc_url=None`."""
    router = APIRouter(include_in_schema=False)
    openapi_url = app.openapi_url or "/openapi.json"

    @router.get("/docs")
    async def docs(request: Request) -> HTMLResponse:
        root = escape(str(request.scope.get("root_path", "")).rstrip("/"))
        page = _PAGE.format(
            title=escape(f"{app.title} - API docs"),
            root=root,
            assets=ASSETS,
            openapi=escape(openapi_url),
        )
        return HTMLResponse(page, headers={"Content-Security-Policy": DOCS_POLICY})

    @router.get("/docs/start.js")
    async def start() -> Response:
        return Response(_START, media_type="text/javascript")

    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
