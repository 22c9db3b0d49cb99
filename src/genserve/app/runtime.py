"""Settings in, a running core out: the model manager with its pools, the sandbox, the engine with
its lanes, and the lip-sync parts when lip-sync is served.

Everything is built here and passed down as arguments, so nothing below reads the environment or
reaches for a singleton. Every command and every door runs on the object this returns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from genserve.app.lipsync import LANE as LIPSYNC_LANE
from genserve.app.lipsync import build_lipsync, lipsync_pool
from genserve.app.logs import configure_logging
from genserve.app.malloc_tuning import keep_freed_memory
from genserve.config import Settings
from genserve.engine.engine import Engine
from genserve.engine.lanes import ServiceLane
from genserve.engine.runtime import Runtime
from genserve.models.devices import device_name, resolve_device
from genserve.models.kinds import ModelKind, parse_kind
from genserve.models.loaders import default_loaders
from genserve.models.manager import ModelManager
from genserve.models.memory import ABLE, MemoryMode
from genserve.models.registry import ModelRegistry
from genserve.services.builtin import SERVICES
from genserve.services.lipsync.admin import LipsyncAdmin
from genserve.storage.paths import Sandbox
from genserve.workflows.queue import LANE as WORKFLOW_LANE

MIB = 1024 * 1024

__all__ = ["Runtime", "build_models", "build_runtime"]


def build_models(settings: Settings) -> ModelManager:
    """The one model manager: the default pool from ``models.*``, the lip-sync pool from ``lipsync.*``."""
    models = settings.models
    hf_home = models.hf_home or Path.home() / ".cache" / "huggingface"
    registry = ModelRegistry(models.dir, settings.lipsync.models, hf_home)
    return ModelManager(
        registry,
        default_loaders(registry.lipsync, models.dir, hf_home, models.allow_downloads),
        max_loaded=models.max_loaded,
        memory_budget_bytes={dev: mb * MIB for dev, mb in models.memory_budget_mb.items()},
        default_device=device_name(resolve_device(models.default_device)),
        dtype=models.dtype,
        eviction=models.eviction_policy,
        idle_timeout_s=models.idle_timeout_s,
        capacity_wait_s=models.capacity_wait_s,
        pools=[lipsync_pool(settings.lipsync)],
        memory_modes=memory_modes(models.memory_mode, models.memory_modes),
        fp8_storage=models.fp8_storage,
    )


def memory_modes(default: str, per_kind: dict[str, str]) -> dict[ModelKind, MemoryMode]:
    """``models.memory_mode`` for the pipeline's kinds, overridden per kind by ``memory_modes``."""
    modes = {kind: MemoryMode(default) for kind in ABLE}
    for name, mode in per_kind.items():
        modes[parse_kind(name)] = MemoryMode(mode)
    return modes


def build_runtime(settings: Settings) -> Runtime:
    configure_logging(settings.logging)
    keep_freed_memory(settings.server.keep_freed_memory_mb)
    if settings.engine.torch_threads:
        torch.set_num_threads(settings.engine.torch_threads)
    device = device_name(resolve_device(settings.models.default_device))
    # Each engine device is checked against this machine now, so a typo stops start-up.
    lanes = [device_name(resolve_device(d)) for d in settings.engine.devices] or [device]
    workers = {device_name(resolve_device(d)): n for d, n in settings.engine.device_workers.items()}
    models = build_models(settings)
    storage = settings.storage
    sandbox = Sandbox(
        storage.read_roots, storage.write_roots, storage.default_output_dir, storage.max_image_pixels
    )
    services = dict(SERVICES)
    service_lanes: dict[str, ServiceLane] = {}
    closers: list[Callable[[], None]] = []
    lipsync = None
    if settings.lipsync.enabled:
        parts = build_lipsync(settings.lipsync, models.registry.lipsync)
        services[LIPSYNC_LANE] = parts.service
        service_lanes[LIPSYNC_LANE] = parts.lane
        closers.append(parts.compositor.close)
        lipsync = LipsyncAdmin(models)
    if settings.workflows.enabled:
        # ComfyUI runs one prompt at a time; workflows.queue_size more may wait.
        service_lanes[WORKFLOW_LANE] = ServiceLane(1, settings.workflows.queue_size)
    engine = Engine(
        models,
        sandbox,
        settings.pipeline,
        queue_size=settings.engine.queue_size,
        workers_per_device=settings.engine.workers_per_device,
        devices=lanes,
        device_workers=workers,
        services=services,
        service_lanes=service_lanes,
    )
    return Runtime(settings, models, sandbox, engine, lipsync, closers)
