"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from the files the ``fastapi-offline`` package
installs: the pages load nothing from elsewhere, and their start-up scripts are files of this
origin too (no inline script), so the same content security policy covers them.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["add_docs_routes"]

ASSETS = "/static/docs"

def _page(head: str, body: str) -> str:
    """A documentation page: the given assets, then the start-up script of this origin."""
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>crossalign search: API</title>
  {head}
  <link rel="icon" href="{ASSETS}/favicon.png">
</head>
<body>
  {body}
  <script src="/static/docs-start.js"></script>
</body>
</html>
"""


_SWAGGER = _page(f'<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">',
                 f'<div id="swagger-ui"></div>\n  <script src="{ASSETS}/swagger-ui-bundle.js"></script>')
_REDOC = _page("", f'<div id="redoc"></div>\n  <script src="{ASSETS}/redoc.standalone.js"></script>')


def _assets() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def add_docs_routes(app: FastAPI) -> None:
    """Serve the API documentation pages and their assets (the app is made with
    ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=_assets()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return HTMLResponse(_SWAGGER)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return HTMLResponse(_REDOC)
