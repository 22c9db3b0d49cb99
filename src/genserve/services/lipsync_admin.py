"""Health, ListModels, LoadModel, UnloadModel and GetModelStats of the lip-sync server.

Plain functions over the lip-sync model manager and catalog; the gRPC door runs them off the
event loop. Every figure is read, not guessed: loaded models and request counts from the
manager, memory from what the loader measured, GPU memory from the device itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.lipsync_catalog import LipsyncCatalog, not_found
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind
from genserve.models.slots import ModelStats
from genserve.services.lipsync_capacity import CapacityWaiter, no_wait
from genserve.services.lipsync_devices import gpu_ids, requested_device

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class LipsyncHealth:
    healthy: bool
    loaded_models: int
    max_models: int
    gpu_ids: list[int]
    gpu_memory_used_gb: list[float]
    problems: list[str]


@dataclass(frozen=True)
class LipsyncModelStats:
    model_id: str
    loaded: bool
    gpu_id: int
    memory_mb: int
    request_count: int
    total_inference_ms: int
    avg_inference_ms: float
    last_used_timestamp: int
    load_count: int
    evictions: int
    # False when the model is not loaded and cannot be (a file missing): ListModels leaves it out.
    available: bool = True


def health(models: ModelManager, catalog: LipsyncCatalog, accepting: bool) -> LipsyncHealth:
    ids = gpu_ids()
    used = []
    for gpu in ids:
        free, total = torch.cuda.mem_get_info(gpu)
        used.append(round((total - free) / GIB, 3))
    problems = []
    if not accepting:
        problems.append("the server is shutting down")
    if not catalog.ids():
        problems.append(f"no lip-sync models configured or found in {catalog.root}")
    for model_id in catalog.ids():
        missing = catalog.missing(model_id)
        if missing is not None and not models.is_loaded(ModelKind.LIPSYNC, model_id):
            problems.append(f"lip-sync model '{model_id}' is unavailable: {missing}")
    loaded = [s for s in models.loaded() if s.kind == ModelKind.LIPSYNC.value]
    return LipsyncHealth(not problems, len(loaded), models.max_loaded, ids, used, problems)


def _gpu_of(stats: ModelStats | None) -> int:
    if stats is None or not stats.loaded or stats.device is None or not stats.device.startswith("cuda"):
        return -1
    return int(stats.device.partition(":")[2] or 0)


def model_stats(models: ModelManager, catalog: LipsyncCatalog) -> list[LipsyncModelStats]:
    """Every model id, loaded or not (the original listed only loaded ones), and whether it can load."""
    known = {s.name: s for s in models.stats() if s.kind == ModelKind.LIPSYNC.value}
    rows = []
    for model_id in sorted({*catalog.ids(), *known}):
        s = known.get(model_id)
        count = s.request_count if s else 0
        total = s.total_inference_ms if s else 0.0
        loaded = bool(s and s.loaded)
        rows.append(
            LipsyncModelStats(
                model_id=model_id,
                loaded=loaded,
                gpu_id=_gpu_of(s),
                memory_mb=math.ceil(s.memory_bytes / MIB) if s and s.loaded else 0,
                request_count=count,
                total_inference_ms=round(total),
                avg_inference_ms=total / count if count else 0.0,
                last_used_timestamp=int(s.last_used) if s and s.last_used else 0,
                load_count=s.load_count if s else 0,
                evictions=s.evictions if s else 0,
                available=loaded or (catalog.is_known(model_id) and catalog.missing(model_id) is None),
            )
        )
    return rows


def load_model(
    models: ModelManager,
    catalog: LipsyncCatalog,
    model_id: str,
    preferred_gpu: int,
    waiter: CapacityWaiter | None = None,
    wait_s: float | None = None,
) -> tuple[int, float]:
    """Returns (gpu id, load ms); the ms are 0 when the model was already loaded.

    The device follows the same rule as requests (``lipsync_devices``). When every slot holds a
    model in use, it waits for room like a request does, at most ``wait_s`` (the client's deadline).
    """
    if not model_id:
        raise GenserveError(ErrorCode.INVALID_INPUT, "model_id is required", field="model_id")
    if not catalog.is_known(model_id):
        raise not_found(model_id)
    device = requested_device(catalog, model_id, preferred_gpu)
    if not models.is_loaded(ModelKind.LIPSYNC, model_id):
        catalog.check_available(model_id)
    loads: list[float] = []
    waiter = waiter if waiter is not None else no_wait()
    stats = waiter.retry(
        lambda: models.load(ModelKind.LIPSYNC, model_id, device, on_load=loads.append),
        model_id,
        wait_s=wait_s,
    )
    return _gpu_of(stats), loads[0] if loads else 0.0


def unload_model(
    models: ModelManager,
    catalog: LipsyncCatalog,
    model_id: str,
    timeout: float | None,
    waiter: CapacityWaiter | None = None,
) -> None:
    """Waits for the requests using the model (up to ``timeout`` s), then frees it."""
    if not model_id:
        raise GenserveError(ErrorCode.INVALID_INPUT, "model_id is required", field="model_id")
    if not catalog.is_known(model_id) and not models.is_loaded(ModelKind.LIPSYNC, model_id):
        raise not_found(model_id)
    if not models.unload(ModelKind.LIPSYNC, model_id, timeout):
        raise GenserveError(ErrorCode.NOT_FOUND, f"Model '{model_id}' is not loaded", field="model_id")
    if waiter is not None:
        waiter.released()  # room for a request waiting on lipsync.max_models
