"""The API's interactive documentation at /docs, with Swagger UI's files from the fastapi-swagger package.
FastAPI's own page loads them from a CDN: on a fleet's closed network, or offline, it was blank (a newcomer's
walkthrough). Only the files of that package are used (its own routes redirect `/`, the dashboard's).
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"


def add_docs(app: FastAPI) -> None:
    """/docs and its files; call before the dashboard's mount at `/`, which matches every path."""
    files = resources.files("fastapi_swagger") / "resources"  # Swagger UI 5: the 4.x of others reads no OpenAPI 3.1
    app.mount(ASSETS, StaticFiles(directory=str(files)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(openapi_url=root + app.openapi_url, title=f"{app.title}: API",
                                   swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url="data:,")  # FastAPI's default icon is on the internet
