"""Health, ListModels, LoadModel, UnloadModel and GetModelStats of the lip-sync server, and its preload.

One object over the model manager's lip-sync pool and the lip-sync registry; the gRPC door calls
it (off the event loop) and nothing else. Every figure is read, not guessed: loaded models and
request counts from the manager, memory from what the loader measured, GPU memory from the device.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.capacity import is_refusal
from genserve.models.lipsync_registry import not_found
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind
from genserve.models.slots import ModelStats
from genserve.services.lipsync.audio import EMBED_DIM, audio_features
from genserve.services.lipsync.capacity import refusal
from genserve.services.lipsync.devices import configured_device, gpu_ids, requested_device

log = logging.getLogger("genserve.lipsync")
LIPSYNC = ModelKind.LIPSYNC

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


def _gpu_of(stats: ModelStats | None) -> int:
    if stats is None or not stats.loaded or stats.device is None or not stats.device.startswith("cuda"):
        return -1
    return int(stats.device.partition(":")[2] or 0)


class LipsyncAdmin:
    def __init__(self, models: ModelManager) -> None:
        self.models = models
        self.registry = models.registry.lipsync

    def health(self, accepting: bool) -> LipsyncHealth:
        ids = gpu_ids()
        used = []
        for gpu in ids:
            free, total = torch.cuda.mem_get_info(gpu)
            used.append(round((total - free) / GIB, 3))
        problems = []
        if not accepting:
            problems.append("the server is shutting down")
        registry = self.registry
        if not registry.ids():
            problems.append(f"no lip-sync models configured or found in {registry.root}")
        for model_id in registry.ids():
            missing = registry.missing(model_id)
            if missing is not None and not self.models.is_loaded(LIPSYNC, model_id):
                problems.append(f"lip-sync model '{model_id}' is unavailable: {missing}")
        loaded = [s for s in self.models.loaded() if s.kind == LIPSYNC.value]
        return LipsyncHealth(
            not problems, len(loaded), self.models.pool(LIPSYNC).max_loaded, ids, used, problems
        )

    def model_stats(self) -> list[LipsyncModelStats]:
        """Every model id, loaded or not, and whether it can load: a client sees what it may ask for."""
        known = {s.name: s for s in self.models.stats() if s.kind == LIPSYNC.value}
        registry = self.registry
        rows = []
        for model_id in sorted({*registry.ids(), *known}):
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
                    available=loaded or (registry.is_known(model_id) and registry.missing(model_id) is None),
                )
            )
        return rows

    def load_model(self, model_id: str, preferred_gpu: int, wait_s: float | None = None) -> tuple[int, float]:
        """Returns (gpu id, load ms); the ms are 0 when the model was already loaded.

        The device follows the same rule as requests (``devices``). When every slot holds a model
        in use, it waits for room like a request does, at most ``wait_s`` (the client's deadline).
        """
        if not model_id:
            raise GenserveError(ErrorCode.INVALID_INPUT, "model_id is required", field="model_id")
        registry = self.registry
        if not registry.is_known(model_id):
            raise not_found(model_id)
        device = requested_device(registry, model_id, preferred_gpu)
        if not self.models.is_loaded(LIPSYNC, model_id):
            registry.check_available(model_id)
        loads: list[float] = []
        try:
            stats = self.models.load(LIPSYNC, model_id, device, on_load=loads.append, wait_s=wait_s)
        except GenserveError as exc:
            raise refusal(exc, model_id) if is_refusal(exc) else exc from None
        return _gpu_of(stats), loads[0] if loads else 0.0

    def unload_model(self, model_id: str, timeout: float | None) -> None:
        """Waits for the requests using the model (up to ``timeout`` s), then frees it."""
        if not model_id:
            raise GenserveError(ErrorCode.INVALID_INPUT, "model_id is required", field="model_id")
        if not self.registry.is_known(model_id) and not self.models.is_loaded(LIPSYNC, model_id):
            raise not_found(model_id)
        if not self.models.unload(LIPSYNC, model_id, timeout):
            raise GenserveError(ErrorCode.NOT_FOUND, f"Model '{model_id}' is not loaded", field="model_id")

    def preload(self) -> None:
        """Warms the audio path, then loads the models marked ``preload``; a failure is logged, not fatal."""
        # librosa builds its filters and JIT-compiles on first use (~1 s): not in a client's request.
        silence = bytes(4 * 10_240)
        audio_features(silence, 16_000, 1, lambda w: np.zeros((len(w), EMBED_DIM), np.float32))
        registry = self.registry
        for model_id in registry.ids():
            if not registry.files(model_id).preload:
                continue
            try:
                registry.check_available(model_id)
                # The request path's rule: a configured GPU that is not here is warned about, not fatal.
                self.models.load(LIPSYNC, model_id, configured_device(registry, model_id))
            except GenserveError as exc:
                log.error("preloading lip-sync model %s failed: %s", model_id, exc.message)
