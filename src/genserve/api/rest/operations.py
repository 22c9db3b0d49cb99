"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from genserve.api.rest.dependencies import EngineDep, MetricsDep, ModelManagerDep
from genserve.api.rest.metrics import CONTENT_TYPE
from genserve.engine.engine import Engine
from genserve.models.manager import ModelManager


def readiness(engine: Engine, models: ModelManager) -> dict[str, Any]:
    """Ready when the models folder can be read and the engine takes work."""
    root = models.registry.root
    models_ok = root.is_dir() and os.access(root, os.R_OK | os.X_OK)
    loads = engine.loads()
    checks = {
        "models_dir": {"ok": models_ok, "setting": "models.dir"},  # open to all: no server path
        "executor": {
            "ok": engine.accepting,
            "devices": {
                load.device: {"running": load.running, "waiting": load.waiting, "capacity": load.capacity}
                for load in loads
            },
        },
    }
    return {"status": "ready" if all(c["ok"] for c in checks.values()) else "not_ready", "checks": checks}


router = APIRouter(tags=["operations"])


@router.get("/health/live", summary="The process answers")
async def live() -> dict[str, str]:
    return {"status": "live"}


@router.get(
    "/health/ready",
    summary="Models folder readable and engine accepting work (503 otherwise)",
    responses={503: {"description": "Not ready; `checks` says which part failed."}},
)
async def ready(engine: EngineDep, models: ModelManagerDep) -> JSONResponse:
    report = readiness(engine, models)
    return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE)
