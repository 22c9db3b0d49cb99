"""Health, ListModels, LoadModel, UnloadModel and GetModelStats of the lip-sync server.

Plain functions over the lip-sync model manager and catalog; the gRPC door runs them off the
event loop. Every figure is read, not guessed: loaded models and request counts from the
manager, memory from what the loader measured, GPU memory from the device itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnxruntime as ort
import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.lipsync_catalog import LipsyncCatalog, not_found
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind
from genserve.models.slots import ModelStats

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


def gpu_ids() -> list[int]:
    """GPUs the lip-sync models can run on: CUDA devices, if onnxruntime here has a CUDA provider."""
    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        return []
    return list(range(torch.cuda.device_count()))


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
    loaded = [s for s in models.loaded() if s.kind == ModelKind.LIPSYNC.value]
    return LipsyncHealth(not problems, len(loaded), models.max_loaded, ids, used, problems)


def _gpu_of(stats: ModelStats | None) -> int:
    if stats is None or not stats.loaded or stats.device is None or not stats.device.startswith("cuda"):
        return -1
    return int(stats.device.partition(":")[2] or 0)


def model_stats(models: ModelManager, catalog: LipsyncCatalog) -> list[LipsyncModelStats]:
    """Every model id, loaded or not (the original listed only loaded ones)."""
    known = {s.name: s for s in models.stats() if s.kind == ModelKind.LIPSYNC.value}
    rows = []
    for model_id in sorted({*catalog.ids(), *known}):
        s = known.get(model_id)
        count = s.request_count if s else 0
        total = s.total_inference_ms if s else 0.0
        rows.append(
            LipsyncModelStats(
                model_id=model_id,
                loaded=bool(s and s.loaded),
                gpu_id=_gpu_of(s),
                memory_mb=math.ceil(s.memory_bytes / MIB) if s and s.loaded else 0,
                request_count=count,
                total_inference_ms=round(total),
                avg_inference_ms=total / count if count else 0.0,
                last_used_timestamp=int(s.last_used) if s and s.last_used else 0,
                load_count=s.load_count if s else 0,
                evictions=s.evictions if s else 0,
            )
        )
    return rows


def load_model(
    models: ModelManager, catalog: LipsyncCatalog, model_id: str, preferred_gpu: int
) -> tuple[int, float]:
    """Returns (gpu id, load ms); the ms are 0 when the model was already loaded."""
    if not model_id:
        raise GenserveError(ErrorCode.INVALID_INPUT, "model_id is required", field="model_id")
    if not catalog.is_known(model_id):
        raise not_found(model_id)
    ids = gpu_ids()
    if preferred_gpu != -1 and preferred_gpu not in ids:
        available = ", ".join(map(str, ids)) or "none (CPU only)"
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"Invalid GPU id {preferred_gpu}: available GPUs: {available}; -1 picks automatically",
            field="preferred_gpu",
        )
    if preferred_gpu == -1:
        configured = catalog.files(model_id).preferred_gpu
        device = f"cuda:{configured}" if configured in ids else None
    else:
        device = f"cuda:{preferred_gpu}"
    loads: list[float] = []
    stats = models.load(ModelKind.LIPSYNC, model_id, device, on_load=loads.append)
    return _gpu_of(stats), loads[0] if loads else 0.0


def unload_model(models: ModelManager, catalog: LipsyncCatalog, model_id: str, timeout: float | None) -> None:
    """Waits for the requests using the model (up to ``timeout`` s), then frees it."""
    if not model_id:
        raise GenserveError(ErrorCode.INVALID_INPUT, "model_id is required", field="model_id")
    if not catalog.is_known(model_id) and not models.is_loaded(ModelKind.LIPSYNC, model_id):
        raise not_found(model_id)
    if not models.unload(ModelKind.LIPSYNC, model_id, timeout):
        raise GenserveError(ErrorCode.NOT_FOUND, f"Model '{model_id}' is not loaded", field="model_id")
