"""ComfyUI's official frontend (the ``comfyui-frontend-package`` static build) as the listener's
web UI at ``/``, and the official workflow templates at ``/templates``, as ComfyUI serves them.

Both come from installed packages, so the page and everything it loads are served by this host:
nothing is fetched from another. A package that is not installed leaves its path unserved (the
API still works for clients); ``user.css``, which the page links whether or not a user wrote one,
answers an empty stylesheet rather than a 404.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import FileResponse, Response

NO_CACHE = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}


def _package_folder(module: str, folder: str) -> Path | None:
    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    path = Path(package.__file__ or "").parent / folder
    return path if path.is_dir() else None


def frontend_dir() -> Path | None:
    return _package_folder("comfyui_frontend_package", "static")


def templates_dir() -> Path | None:
    """``comfyui-workflow-templates`` (what ComfyUI uses), else its JSON-only twin."""
    return _package_folder("comfyui_workflow_templates", "templates") or _package_folder(
        "comfyui_workflow_templates_json", "templates"
    )


def mount_frontend(app: FastAPI, frontend: Path | None, templates: Path | None) -> None:
    """Mounts last: every API route added before them wins over a file of the same path."""
    if templates is not None:
        app.mount("/templates", StaticFiles(directory=templates), name="templates")

    async def user_css(request: Request) -> Response:
        return Response("", media_type="text/css")

    app.add_route("/user.css", user_css)
    if frontend is None:
        return
    index = frontend / "index.html"

    async def root(request: Request) -> Response:
        return FileResponse(index, headers=NO_CACHE)

    app.add_route("/", root)
    app.mount("/", StaticFiles(directory=frontend), name="frontend")
