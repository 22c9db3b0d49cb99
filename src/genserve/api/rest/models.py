"""Model admin: the REST face of the model manager (list, load, unload, stats).

Loading and unloading block on weights and on requests still using a model, so they run on a
worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from genserve.api.rest.auth import admin
from genserve.api.rest.dependencies import ConfiguredModelsDep, ModelManagerDep
from genserve.api.rest.errors import ERROR_RESPONSES, request_id_of
from genserve.errors import GenserveError
from genserve.models.inventory import inventory
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind
from genserve.models.slots import ModelStats


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadRequest(_Body):
    device: str | None = Field(
        None, description="Preferred device (cpu, cuda, cuda:N or auto); default: models.default_device."
    )


class UnloadRequest(_Body):
    timeout_s: float = Field(
        30.0, ge=0, le=3600, description="How long to wait for requests still using the model."
    )


class ModelRow(BaseModel):
    kind: str
    name: str
    on_disk: bool
    size_bytes: int
    configured_as: list[str]
    loaded: bool
    device: str | None
    memory_bytes: int
    request_count: int = 0
    total_inference_ms: float = 0.0
    average_inference_ms: float = 0.0
    last_used: float | None = None
    load_time_ms: float = 0.0
    load_count: int = 0
    pinned: int = 0
    format: str = Field("", description="What the files are, detected from their contents.")
    dtype: str = Field("", description="The dtype that holds most of the weights (F32, BF16, F8_E4M3...).")
    memory_mode: str = Field(
        "", description="resident, offloaded or streamed: what it has if loaded, else what a load would get."
    )
    loaded_bytes: int = Field(0, description="Bytes it takes (or would take) on its device in that mode.")
    fp8_stored: bool = Field(
        False, description="Weights kept in fp8, computing in the compute dtype (models.fp8_storage)."
    )


class ModelListResponse(BaseModel):
    status: Literal["success"] = "success"
    request_id: str | None
    models_dir: str = Field(
        description="The models folder (models.dir) relative to the server's working folder, or just its "
        "name when it lies elsewhere: never the server's absolute path."
    )
    models: list[ModelRow]


class ModelActionResponse(BaseModel):
    status: Literal["success"] = "success"
    request_id: str | None
    kind: str
    name: str
    action: Literal["load", "unload"]
    changed: bool = Field(description="load: this call loaded it; unload: this call unloaded it.")
    duration_ms: float
    model: dict[str, Any] | None = Field(description="The model's stats after the action.")


class PoolStats(BaseModel):
    """One pool of the model manager: the kinds it holds, its rules and what it holds now."""

    name: str
    kinds: list[str]
    max_loaded: int
    loaded_count: int
    memory_bytes_by_device: dict[str, int]
    memory_budget_bytes: dict[str, int]
    eviction_policy: str
    idle_timeout_s: float
    capacity_wait_s: float


class StatsResponse(BaseModel):
    status: Literal["success"] = "success"
    request_id: str | None
    max_loaded: int  # the default pool's; every pool's in ``pools``
    loaded_count: int
    memory_bytes_by_device: dict[str, int]  # every loaded model's, whichever its pool
    memory_budget_bytes: dict[str, int]
    pools: list[PoolStats]
    models: list[dict[str, Any]]


def _pool_stats(manager: ModelManager, rows: list[ModelStats]) -> list[PoolStats]:
    found = []
    for pool in manager.pools:
        kinds = [k.value for k in ModelKind if manager.pool(k) is pool]
        held = [row for row in rows if row.loaded and row.kind in kinds]
        found.append(
            PoolStats(
                name=pool.name,
                kinds=kinds,
                max_loaded=pool.max_loaded,
                loaded_count=len(held),
                memory_bytes_by_device=_by_device(held),
                memory_budget_bytes=manager.budgets(pool),
                eviction_policy=pool.eviction,
                idle_timeout_s=pool.idle_timeout_s,
                capacity_wait_s=pool.capacity_wait_s,
            )
        )
    return found


def _by_device(rows: list[ModelStats]) -> dict[str, int]:
    memory: dict[str, int] = {}
    for row in rows:
        if row.loaded and row.device:
            memory[row.device] = memory.get(row.device, 0) + row.memory_bytes
    return memory


def _canonical(manager: ModelManager, kind: ModelKind, name: str) -> str:
    """The name the manager files a model under (``x.safetensors`` may be the folder ``x``)."""
    try:
        return manager.registry.resolve(kind, name, "name").name
    except GenserveError:
        return name


router = APIRouter(prefix="/api/v1/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", response_model=ModelListResponse, summary="Every model on disk or configured")
async def list_models(
    request: Request,
    manager: ModelManagerDep,
    configured: ConfiguredModelsDep,
    kind: ModelKind | None = Query(None, description="Only this kind."),
) -> ModelListResponse:
    rows = await asyncio.to_thread(inventory, manager, configured, kind)
    return ModelListResponse(
        request_id=request_id_of(request),
        models_dir=_models_dir(manager.registry.root),
        models=[ModelRow(**row.to_dict()) for row in rows],
    )


@router.get("/stats", response_model=StatsResponse, summary="Loaded models and per-model stats")
async def stats(request: Request, manager: ModelManagerDep) -> StatsResponse:
    rows = manager.stats()
    return StatsResponse(
        request_id=request_id_of(request),
        max_loaded=manager.max_loaded,
        loaded_count=sum(1 for row in rows if row.loaded),
        memory_bytes_by_device=_by_device(rows),
        memory_budget_bytes=manager.memory_budgets,
        pools=_pool_stats(manager, rows),
        models=[row.to_dict() for row in rows],
    )


ADMIN = [Depends(admin)]


@router.post(
    "/{kind}/{name}/load", response_model=ModelActionResponse, summary="Load a model now", dependencies=ADMIN
)
async def load(
    request: Request,
    manager: ModelManagerDep,
    kind: ModelKind,
    name: str,
    body: LoadRequest | None = Body(None),
) -> ModelActionResponse:
    device = body.device if body is not None else None
    started = time.perf_counter()
    was_loaded = manager.is_loaded(kind, name)
    stats = await asyncio.to_thread(manager.load, kind, name, device)
    return ModelActionResponse(
        request_id=request_id_of(request),
        kind=kind.value,
        name=stats.name,
        action="load",
        changed=not was_loaded and stats.loaded,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
        model=stats.to_dict(),
    )


@router.post(
    "/{kind}/{name}/unload", response_model=ModelActionResponse, summary="Unload a model", dependencies=ADMIN
)
async def unload(
    request: Request,
    manager: ModelManagerDep,
    kind: ModelKind,
    name: str,
    body: UnloadRequest | None = Body(None),
) -> ModelActionResponse:
    timeout = body.timeout_s if body is not None else UnloadRequest().timeout_s
    started = time.perf_counter()
    changed = await asyncio.to_thread(manager.unload, kind, name, timeout)
    key = (kind.value, _canonical(manager, kind, name))
    after = next((s for s in manager.stats() if (s.kind, s.name) == key), None)
    return ModelActionResponse(
        request_id=request_id_of(request),
        kind=kind.value,
        name=after.name if after else name,
        action="unload",
        changed=changed,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
        model=after.to_dict() if after else None,
    )


def _models_dir(root: Path) -> str:
    try:
        return root.resolve().relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return root.name
