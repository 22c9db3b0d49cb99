"""The API docs pages (``/docs``: Swagger UI, ``/redoc``: ReDoc) with their scripts, styles and
icon served by this server from the ``fastapi-offline`` package, not from a public CDN (FastAPI's
default), so they work on a host with no way out and tell no other host who reads them. ReDoc's
script names one image on its maker's CDN; it is served with that address replaced.

Like FastAPI's own, these pages and their assets are plain routes and a mount, outside the app's
auth dependency: they show the API's shape, nothing of the server's state.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs-assets"
REDOC_JS = "redoc.standalone.js"
# ReDoc's menu shows its maker's logo from their CDN; the page shows an empty image instead.
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_SVG = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"


@lru_cache(maxsize=1)
def _redoc_script() -> bytes:
    return (ASSETS / REDOC_JS).read_bytes().replace(REDOC_LOGO, EMPTY_SVG)


def install_docs_pages(app: FastAPI) -> None:
    """For an app made with ``docs_url=None, redoc_url=None``."""

    async def redoc_script(request: Request) -> Response:
        return Response(_redoc_script(), media_type="text/javascript")

    app.add_route(f"{ASSETS_URL}/{REDOC_JS}", redoc_script, include_in_schema=False)
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    app.add_route("/docs", swagger, include_in_schema=False)
    app.add_route(redirect_url, redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
