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

_SWAGGER = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>crossalign search: API</title>
  <link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
  <link rel="icon" href="{ASSETS}/favicon.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS}/swagger-ui-bundle.js"></script>
  <script src="/static/docs-start.js"></script>
</body>
</html>
"""

_REDOC = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>crossalign search: API</title>
  <link rel="icon" href="{ASSETS}/favicon.png">
</head>
<body>
  <div id="redoc"></div>
  <script src="{ASSETS}/redoc.standalone.js"></script>
  <script src="/static/docs-start.js"></script>
</body>
</html>
"""


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
