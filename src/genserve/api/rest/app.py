"""The REST door's app factory: one FastAPI app over one runtime and the workflow parts.

Everything the routes need is passed in here (no globals, no ``app.state`` grab-bag), so tests
and the server build apps the same way. The app owns none of it: the composition root starts and
stops the prompt queue and the bridge, and closes the runtime once every door has finished its
last request (engine first, then models).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from genserve import __version__
from genserve.api.rest.bridge import bridge_router
from genserve.api.rest.comfy import SHARED_PATHS, comfy_router
from genserve.api.rest.errors import install_error_handlers
from genserve.api.rest.metrics import ServerMetrics
from genserve.api.rest.middleware import RequestContextMiddleware
from genserve.api.rest.models import models_router
from genserve.api.rest.openai_compat import openai_router
from genserve.api.rest.operations import operations_router
from genserve.api.rest.pipeline import pipeline_router
from genserve.bridge.aliases import WorkflowCatalog
from genserve.bridge.dispatcher import Bridge
from genserve.engine.runtime import Runtime
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
) -> FastAPI:
    """ComfyUI's API is mounted when ``prompts`` is given, the bridge's when ``bridge`` and
    ``catalog`` are."""
    settings = runtime.settings
    metrics = ServerMetrics(runtime.engine, runtime.models)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            metrics.close()

    app = FastAPI(
        title="genserve",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    install_error_handlers(app, settings.server.retry_after_s)
    app.include_router(pipeline_router(runtime.engine, settings.server))
    app.include_router(models_router(runtime.models, settings.pipeline))
    app.include_router(operations_router(runtime.engine, runtime.models, metrics))
    app.include_router(openai_router(runtime.engine, runtime.models, settings.server))
    upload_limits: dict[str, int] = {}
    if prompts is not None:
        upload_limit = max(settings.server.max_body_bytes, int(settings.bridge.max_upload_mb * 2**20) + 2**16)
        app.include_router(comfy_router(prompts, upload_limit), prefix=COMFY_PREFIX)
        app.include_router(comfy_router(prompts, upload_limit, skip=SHARED_PATHS if bridge else frozenset()))
        upload_limits |= {"/upload/image": upload_limit, f"{COMFY_PREFIX}/upload/image": upload_limit}
    if bridge is not None and catalog is not None:
        max_file = int(settings.bridge.max_upload_mb * 2**20)
        app.include_router(
            bridge_router(
                bridge,
                catalog,
                upload_dir=settings.workflows.input_dir.resolve(),
                max_file_bytes=max_file,
                max_files=settings.bridge.max_upload_files,
                listening_interval_s=settings.bridge.listening_interval_s,
            )
        )
        upload_limits["/upload"] = max_file * settings.bridge.max_upload_files + 2**20
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.server.max_body_bytes,
        retry_after_s=settings.server.retry_after_s,
        access_log=settings.server.access_log,
        body_limits=upload_limits,
    )
    return app
