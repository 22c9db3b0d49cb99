"""The lip-sync server's parts, built from the ``lipsync`` settings by the composition root.

The lip-sync models get a ModelManager of their own (the original server's ``max_models`` and
memory budget are its capacity, apart from the diffusion models'), an engine lane with its own
workers and dynamic batcher, and one compositing pool shared by every request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from genserve.config_lipsync import LipsyncSettings
from genserve.engine.batching import DynamicBatcher
from genserve.engine.lanes import ServiceLane
from genserve.errors import GenserveError
from genserve.models.lipsync_catalog import LipsyncCatalog
from genserve.models.loaders.lipsync import make_lipsync_loader
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind
from genserve.services.base import Service
from genserve.services.lipsync import make_service
from genserve.services.lipsync_audio import EMBED_DIM, audio_features
from genserve.services.lipsync_capacity import CapacityWaiter
from genserve.services.lipsync_composite import Compositor
from genserve.services.lipsync_devices import configured_device

log = logging.getLogger("genserve.lipsync")
GIB = 1024**3
LANE = "lipsync"


@dataclass
class LipsyncParts:
    settings: LipsyncSettings
    models: ModelManager
    catalog: LipsyncCatalog
    batcher: DynamicBatcher
    compositor: Compositor
    service: Service  # type: ignore[type-arg]
    # Wakes requests waiting for a free lipsync.max_models slot; shared by the service and LoadModel.
    waiter: CapacityWaiter = field(default_factory=lambda: CapacityWaiter(0.0))
    _stop: threading.Event = field(default_factory=threading.Event)
    _reaper: threading.Thread | None = None
    # (id, load count) -> when unload_idle first saw that load: the idle clock of a model loaded
    # ahead of requests (preload, LoadModel), whose last_used is from an earlier load or none.
    _loads_seen: dict[tuple[str, int], float] = field(default_factory=dict)

    @property
    def lane(self) -> ServiceLane:
        return ServiceLane(self.settings.workers, self.settings.queue_size, self.models, self.batcher)

    def preload(self) -> None:
        """Warms the audio path, then loads the models marked ``preload``; a failure is logged, not fatal."""
        # librosa builds its filters and JIT-compiles on first use (~1 s): not in a client's request.
        silence = bytes(4 * 10_240)
        audio_features(silence, 16_000, 1, lambda w: np.zeros((len(w), EMBED_DIM), np.float32))
        for model_id in self.catalog.ids():
            files = self.catalog.files(model_id)
            if not files.preload:
                continue
            try:
                self.catalog.check_available(model_id)
                # The request path's rule: a configured GPU that is not here is warned about, not fatal.
                self.models.load(ModelKind.LIPSYNC, model_id, configured_device(self.catalog, model_id))
            except GenserveError as exc:
                log.error("preloading lip-sync model %s failed: %s", model_id, exc.message)

    def start_idle_reaper(self) -> None:
        minutes = self.settings.idle_timeout_minutes
        if minutes <= 0 or self._reaper is not None:
            return
        period = min(minutes * 60 / 4, 30.0)
        self._reaper = threading.Thread(target=self._reap, args=(minutes * 60, period), daemon=True)
        self._reaper.start()

    def _reap(self, idle_s: float, period: float) -> None:
        while not self._stop.wait(period):
            self.unload_idle(idle_s)

    def unload_idle(self, idle_s: float) -> list[str]:
        """Unloads models that are not in use and were last used more than ``idle_s`` ago.

        A load counts as a use, so a model preloaded or loaded by LoadModel gets its full idle
        time too (from when this first saw it loaded: at most one reaper period late).
        """
        now, gone = time.time(), []
        loaded = self.models.loaded()
        current = {(s.name, s.load_count) for s in loaded}
        self._loads_seen = {k: t for k, t in self._loads_seen.items() if k in current}
        for s in loaded:
            seen = self._loads_seen.setdefault((s.name, s.load_count), now)
            last = max(s.last_used or 0.0, seen)
            if s.pinned or now - last < idle_s:
                continue
            try:
                if self.models.unload(ModelKind.LIPSYNC, s.name, timeout=0):
                    log.info("unloaded lip-sync model %s: idle for %.0f s", s.name, now - last)
                    gone.append(s.name)
                    self.waiter.released()
            except GenserveError:
                pass  # picked up by a request meanwhile: it stays
        return gone

    def close(self) -> None:
        self._stop.set()
        self.models.close()
        self.compositor.close()


def build_lipsync(settings: LipsyncSettings, models_dir: Path, default_device: str) -> LipsyncParts:
    catalog = LipsyncCatalog(models_dir, settings.models)
    for model_id in catalog.ids():
        missing = catalog.missing(model_id)
        if missing is not None:  # Health reports it too; this names it where operators look first
            log.warning("lip-sync model %s is unavailable: %s", model_id, missing)
    budget = {}
    if settings.max_memory_gb is not None:
        # The budget is per device, as in the original server (one figure for each GPU).
        budget = {device: int(settings.max_memory_gb * GIB) for device in ("cpu", *_cuda_names())}
    models = ModelManager(
        catalog,  # type: ignore[arg-type]  # the catalog answers resolve() like a ModelRegistry
        {ModelKind.LIPSYNC: make_lipsync_loader(catalog)},
        max_loaded=settings.max_models,
        memory_budget_bytes=budget,
        default_device=default_device,
        eviction=settings.eviction_policy,
    )
    batcher = DynamicBatcher(
        settings.max_batch_frames, settings.max_batch_delay_ms / 1000, enabled=settings.batching != "off"
    )
    # The compositor spreads frames over its own threads; OpenCV's threads inside each call would
    # only compete with them (measured: 1 OpenCV thread per call is quickest). Process-wide.
    cv2.setNumThreads(1)
    compositor = Compositor(settings.composite_workers or os.cpu_count() or 1, settings.jpeg_quality)
    waiter = CapacityWaiter(settings.capacity_wait_s)
    service = make_service(
        catalog,
        compositor,
        LANE,
        batch_on_cpu=settings.batching == "on",
        waiter=waiter,
        max_audio_s=settings.max_audio_s,
    )
    return LipsyncParts(settings, models, catalog, batcher, compositor, service, waiter)


def _cuda_names() -> list[str]:
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
