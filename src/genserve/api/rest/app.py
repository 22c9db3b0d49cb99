"""The REST door's app factory: one FastAPI app over one runtime and the workflow parts.

``build_app`` is the one place that knows what an app serves. Everything the routes need is
passed in here and stored once, typed, on ``app.state`` (``dependencies.RestParts``), where routes
reach it only through the accessors in ``dependencies``; the routers are module-level, so tests and
the server build apps the same way. The app owns none of it: the composition root starts and
stops the prompt queue and the bridge, and closes the runtime once every door has finished its
last request (engine first, then models).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from genserve import __version__
from genserve.api.rest import bridge as bridge_api
from genserve.api.rest import comfy, models, openai_compat, operations, pipeline
from genserve.api.rest.auth import authenticate
from genserve.api.rest.dependencies import BridgeLimits, ComfyFiles, RestParts, parts_of, store_parts
from genserve.api.rest.docs_pages import install_docs_pages
from genserve.api.rest.errors import install_error_handlers
from genserve.api.rest.metrics import ServerMetrics
from genserve.api.rest.middleware import RequestContextMiddleware
from genserve.auth.guard import Guard
from genserve.auth.keys import KeyStore
from genserve.bridge.aliases import WorkflowCatalog
from genserve.bridge.dispatcher import Bridge
from genserve.config import Settings
from genserve.engine.runtime import Runtime
from genserve.models.inventory import configured_models
from genserve.storage.owners import ClientOwners
from genserve.workflows.nodes.builtin import PipelineResources
from genserve.workflows.queue import PromptQueue

DESCRIPTION = """\
genserve's REST door: the four services of the Qwen-Image-Edit-2509 pipeline (latent encoder,
text encoder, sampling, decoding) plus the one-piece `edit`, model admin, health and metrics.

Every failure answers in one format: `{"status": "error", "request_id", "error_code",
"error_message", "timestamp"}`. Send `X-Request-ID` to set the request id (echoed in the
response header, body and logs).
"""

TAGS = [
    {"name": "pipeline", "description": "The pipeline services, as the spec gives them."},
    {"name": "models", "description": "What is on disk and loaded; load and unload by hand."},
    {"name": "operations", "description": "Health checks and Prometheus metrics."},
    {
        "name": "openai",
        "description": "OpenAI-compatible text generation over models/llm/: /v1/models, "
        "/v1/chat/completions, /v1/completions (streaming as server-sent events); errors in OpenAI's shape.",
    },
    {
        "name": "comfyui",
        "description": "ComfyUI's own server API: /prompt, /queue, /history, /view, /ws; complete "
        "under /comfy/ (at the root, the bridge owns /ws, GET /history, /free and /interrupt).",
    },
    {
        "name": "bridge",
        "description": "The workflow bridge: /ws?clientId=, /workflow-list, /workflow-info, /upload, "
        "/generate-based-workflow, /history?clientId=, /execution-info, /generation-count, /free, "
        "/interrupt.",
    },
]
COMFY_PREFIX = "/comfy"


def build_app(
    runtime: Runtime,
    *,
    prompts: PromptQueue | None = None,
    bridge: Bridge | None = None,
    catalog: WorkflowCatalog | None = None,
    client_owners: ClientOwners | None = None,
) -> FastAPI:
    """ComfyUI's API is mounted when ``prompts`` is given, the bridge's when ``bridge`` and
    ``catalog`` are."""
    settings = runtime.settings
    parts = RestParts(
        runtime=runtime,
        metrics=ServerMetrics(runtime.engine, runtime.models),
        configured_models=configured_models(settings.pipeline),
        prompts=prompts,
        comfy_files=_comfy_files(prompts, settings) if prompts is not None else None,
        bridge=bridge,
        catalog=catalog,
        bridge_limits=_bridge_limits(settings) if bridge is not None and catalog is not None else None,
        guard=Guard(KeyStore(settings.auth.keys_file)),
        client_owners=client_owners,
    )
    app = FastAPI(
        title="genserve",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=_lifespan,
        dependencies=[Depends(authenticate)],
        docs_url=None,
        redoc_url=None,
    )
    install_docs_pages(app)
    store_parts(app, parts)
    install_error_handlers(app, settings.server.retry_after_s)
    _include_routers(app, parts)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=parts.metrics,
        max_body_bytes=settings.server.max_body_bytes,
        retry_after_s=settings.server.retry_after_s,
        access_log=settings.server.access_log,
        body_limits=_body_limits(parts),
        max_json_depth=settings.server.max_json_depth,
    )
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        parts_of(app).metrics.close()


def _include_routers(app: FastAPI, parts: RestParts) -> None:
    """Include order is match order, and the first route whose path matches but not its method
    gives a 405 its ``Allow``: ComfyUI's GET /history stays ahead of its POST /history, and at the
    root its POST /history ahead of the bridge's GET /history."""
    for router in (pipeline.router, models.router, operations.router, openai_compat.router):
        app.include_router(router)
    if parts.prompts is not None:
        app.include_router(comfy.shared_router, prefix=COMFY_PREFIX)
        app.include_router(comfy.router, prefix=COMFY_PREFIX)
        if parts.bridge is None:  # else the bridge answers the shared paths at the root
            app.include_router(comfy.shared_router)
        app.include_router(comfy.router)
    if parts.bridge_limits is not None:
        app.include_router(bridge_api.router)


def _comfy_files(prompts: PromptQueue, settings: Settings) -> ComfyFiles:
    resources: PipelineResources = prompts.resources
    folders = {
        "input": resources.input_dir,
        "output": resources.output_dir or resources.sandbox.default_output_dir,
        "temp": resources.temp_root(),  # PreviewImage's files
    }
    # A bridge re-sends its clients' uploads (up to bridge.max_upload_mb) here as a job's inputs.
    upload_limit = max(settings.server.max_body_bytes, int(settings.bridge.max_upload_mb * 2**20) + 2**16)
    return ComfyFiles(folders, upload_limit)


def _bridge_limits(settings: Settings) -> BridgeLimits:
    return BridgeLimits(
        upload_dir=settings.workflows.input_dir.resolve(),
        max_file_bytes=int(settings.bridge.max_upload_mb * 2**20),
        max_files=settings.bridge.max_upload_files,
        listening_interval_s=settings.bridge.listening_interval_s,
    )


def _body_limits(parts: RestParts) -> dict[str, int]:
    """The upload routes' own body limits, above the server's ``max_body_bytes``."""
    limits: dict[str, int] = {}
    if parts.comfy_files is not None:
        upload_limit = parts.comfy_files.max_upload_bytes
        for route in ("/upload/image", "/upload/mask"):
            limits |= {route: upload_limit, f"{COMFY_PREFIX}{route}": upload_limit}
    if parts.bridge_limits is not None:
        bridge_limits = parts.bridge_limits
        limits["/upload"] = bridge_limits.max_file_bytes * bridge_limits.max_files + 2**20
    return limits
