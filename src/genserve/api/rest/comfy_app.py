"""The ComfyUI listener's app: ComfyUI's whole API at its own paths, at the root and again under
``/api/`` (as ComfyUI's server.py serves every route), its frontend at ``/`` and the templates at
``/templates``.

It shares the REST door's parts (runtime, prompt queue, ComfyUI folders, metrics, Guard), so a
prompt queued here is the same queue's and a key valid there is valid here; only the web UI's
per-user store is its own. No bridge here: ``/ws``, ``/history``, ``/free`` and ``/interrupt`` are
ComfyUI's. Auth is a middleware (``comfy_auth``), so the frontend's files are guarded too.
"""

from __future__ import annotations

import dataclasses

from fastapi import FastAPI

from genserve import __version__
from genserve.api.rest import comfy, comfy_jobs, comfy_users
from genserve.api.rest.comfy_auth import ComfyAuthMiddleware
from genserve.api.rest.comfy_frontend import mount_frontend
from genserve.api.rest.dependencies import ComfyUi, RestParts, store_parts
from genserve.api.rest.errors import install_error_handlers
from genserve.api.rest.middleware import RequestContextMiddleware
from genserve.config import Settings

API_PREFIX = "/api"
UPLOAD_ROUTES = ("/upload/image", "/upload/mask")


def build_comfy_app(parts: RestParts, ui: ComfyUi, settings: Settings) -> FastAPI:
    """``parts`` are the REST door's, with its prompt queue and ComfyUI folders."""
    if parts.prompts is None or parts.comfy_files is None:
        raise ValueError("the ComfyUI listener needs the prompt queue (workflows.enabled)")
    own = dataclasses.replace(parts, bridge=None, catalog=None, bridge_limits=None, comfy_ui=ui)
    app = FastAPI(
        title="genserve (ComfyUI)",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    store_parts(app, own)
    install_error_handlers(app, settings.server.retry_after_s)
    for prefix in (API_PREFIX, ""):
        for router in (comfy.shared_router, comfy.router, comfy_jobs.router, comfy_users.router):
            app.include_router(router, prefix=prefix)
    mount_frontend(app, ui.frontend_dir, ui.templates_dir)
    app.add_middleware(
        ComfyAuthMiddleware,
        guard=own.guard,
        secure_cookie=settings.server.tls_cert_file is not None,
    )
    upload_limit = parts.comfy_files.max_upload_bytes
    app.add_middleware(
        RequestContextMiddleware,
        metrics=own.metrics,
        # The frontend sends the whole UI graph with each prompt and saves workflows as user data.
        max_body_bytes=max(settings.server.max_body_bytes, settings.comfy.max_userdata_bytes + 2**16),
        retry_after_s=settings.server.retry_after_s,
        access_log=settings.server.access_log,
        body_limits={f"{p}{r}": upload_limit for p in (API_PREFIX, "") for r in UPLOAD_ROUTES},
        max_json_depth=settings.server.max_json_depth,
    )
    return app
