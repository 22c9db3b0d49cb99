"""The lip-sync server's parts, built from the ``lipsync`` settings: its pool in the one model
manager, its engine lane (own workers, queue and batcher), the service with its compositing pool,
and the admin object the gRPC door calls."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import cv2
import torch

from genserve.config import LipsyncSettings
from genserve.engine.batching import DynamicBatcher
from genserve.engine.lanes import ServiceLane
from genserve.models.lipsync_registry import LipsyncRegistry
from genserve.models.pools import Pool, PoolKeys
from genserve.models.registry import ModelKind
from genserve.services.base import Service
from genserve.services.lipsync.compositing import Compositor
from genserve.services.lipsync.service import make_service

log = logging.getLogger("genserve.lipsync")
GIB = 1024**3
LANE = "lipsync"
KEYS = PoolKeys("lipsync.max_models", "lipsync.max_memory_gb", "lipsync.capacity_wait_s")


def lipsync_pool(settings: LipsyncSettings) -> Pool:
    """The lip-sync models' rules in the one manager: the original server's limits, by its keys."""
    budget = {}
    if settings.max_memory_gb is not None:
        # The budget is per device, as in the original server (one figure for each GPU).
        budget = {device: int(settings.max_memory_gb * GIB) for device in ("cpu", *_cuda_names())}
    return Pool(
        name=LANE,
        kinds=frozenset({ModelKind.LIPSYNC}),
        max_loaded=settings.max_models,
        memory_budget_bytes=budget,
        eviction=settings.eviction_policy,
        idle_timeout_s=settings.idle_timeout_minutes * 60,
        capacity_wait_s=settings.capacity_wait_s,
        keys=KEYS,
    )


@dataclass
class LipsyncParts:
    service: Service  # type: ignore[type-arg]
    lane: ServiceLane
    compositor: Compositor


def build_lipsync(settings: LipsyncSettings, registry: LipsyncRegistry) -> LipsyncParts:
    for model_id in registry.ids():
        missing = registry.missing(model_id)
        if missing is not None:  # Health reports it too; this names it where operators look first
            log.warning("lip-sync model %s is unavailable: %s", model_id, missing)
    batcher = DynamicBatcher(
        settings.max_batch_frames, settings.max_batch_delay_ms / 1000, enabled=settings.batching != "off"
    )
    # The compositor spreads frames over its own threads; OpenCV's threads inside each call would
    # only compete with them (measured: 1 OpenCV thread per call is quickest). Process-wide.
    cv2.setNumThreads(1)
    compositor = Compositor(settings.composite_workers or os.cpu_count() or 1, settings.jpeg_quality)
    service = make_service(
        registry,
        compositor,
        LANE,
        batch_on_cpu=settings.batching == "on",
        max_audio_s=settings.max_audio_s,
    )
    return LipsyncParts(service, ServiceLane(settings.workers, settings.queue_size, batcher), compositor)


def _cuda_names() -> list[str]:
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
