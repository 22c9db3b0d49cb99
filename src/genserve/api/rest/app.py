"""The REST door's app factory: one FastAPI app over one runtime.

Everything the routes need is passed in here (no globals, no ``app.state`` grab-bag), so tests
and the server build apps the same way. The app does not own the runtime: the server closes it
once every door has finished its last request (engine first, then models).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from genserve import __version__
from genserve.api.rest.bridge import bridge_router, build_bridge
from genserve.api.rest.comfy import SHARED_PATHS, build_workflow_executor, comfy_router
from genserve.api.rest.errors import install_error_handlers
from genserve.api.rest.metrics import ServerMetrics
from genserve.api.rest.middleware import RequestContextMiddleware
from genserve.api.rest.models import models_router
from genserve.api.rest.openai_compat import openai_router
from genserve.api.rest.operations import operations_router
from genserve.api.rest.pipeline import pipeline_router
from genserve.runtime import Runtime

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


def build_app(runtime: Runtime) -> FastAPI:
    settings = runtime.settings
    metrics = ServerMetrics(runtime.engine, runtime.models)
    # ComfyUI's API: its prompt queue starts and stops with the server (a stop interrupts the
    # running prompt, so it ends within the grace period and its client hears why).
    executor = build_workflow_executor(runtime) if settings.workflows.enabled else None
    # The bridge hands jobs to backends (this process's executor among them); it stops first, so
    # the jobs it was running stay queued for the next start rather than failing on the way down.
    bridge, catalog = build_bridge(runtime, executor) if settings.bridge.enabled else (None, None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if executor is not None:
            executor.start()
        if bridge is not None:
            await bridge.start()
        try:
            yield
        finally:
            if bridge is not None:
                await bridge.stop()
                bridge.store.close()
            if executor is not None:
                await asyncio.to_thread(executor.stop)
            metrics.close()

    app = FastAPI(
        title="genserve",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    # The server tells bridge sockets why they close before uvicorn closes them (server.py).
    app.state.bridge = bridge
    install_error_handlers(app, settings.server.retry_after_s)
    app.include_router(pipeline_router(runtime.engine, settings.server))
    app.include_router(models_router(runtime.models, settings.pipeline))
    app.include_router(operations_router(runtime.engine, runtime.models, metrics))
    app.include_router(openai_router(runtime.engine, runtime.models, settings.server))
    upload_limits: dict[str, int] = {}
    if executor is not None:
        upload_limit = max(settings.server.max_body_bytes, int(settings.bridge.max_upload_mb * 2**20) + 2**16)
        app.include_router(comfy_router(executor, upload_limit), prefix=COMFY_PREFIX)
        app.include_router(comfy_router(executor, upload_limit, skip=SHARED_PATHS if bridge else frozenset()))
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
