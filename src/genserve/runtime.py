"""The composition root: settings in, a running core (manager, sandbox, engine) out.

Everything is built here and passed down as arguments, so nothing below reads the environment or
reaches for a singleton. The CLI uses it today; the server's doors use the same object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from genserve.config import Settings
from genserve.engine.engine import Engine
from genserve.lipsync_runtime import LANE as LIPSYNC_LANE
from genserve.lipsync_runtime import LipsyncParts, build_lipsync
from genserve.malloc_tuning import keep_freed_memory
from genserve.models.devices import device_name, resolve_device
from genserve.models.loaders import default_loaders
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelRegistry
from genserve.services.catalog import SERVICES
from genserve.storage.paths import Sandbox

MIB = 1024 * 1024


@dataclass
class Runtime:
    settings: Settings
    models: ModelManager
    sandbox: Sandbox
    engine: Engine
    lipsync: LipsyncParts | None = None

    def close(self) -> None:
        """Engine first (lets running work finish), then the models."""
        self.engine.close()
        self.models.close()
        if self.lipsync is not None:
            self.lipsync.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def build_runtime(settings: Settings) -> Runtime:
    configure_logging(settings)
    keep_freed_memory(settings.server.keep_freed_memory_mb)
    if settings.engine.torch_threads:
        torch.set_num_threads(settings.engine.torch_threads)
    device = device_name(resolve_device(settings.models.default_device))
    # Each engine device is checked against this machine now, so a typo stops start-up.
    lanes = [device_name(resolve_device(d)) for d in settings.engine.devices] or [device]
    workers = {device_name(resolve_device(d)): n for d, n in settings.engine.device_workers.items()}
    models = ModelManager(
        ModelRegistry(settings.models.dir),
        default_loaders(),
        max_loaded=settings.models.max_loaded,
        memory_budget_bytes={dev: mb * MIB for dev, mb in settings.models.memory_budget_mb.items()},
        default_device=device,
        dtype=settings.models.dtype,
    )
    storage = settings.storage
    sandbox = Sandbox(storage.read_roots, storage.write_roots, storage.default_output_dir)
    lipsync = None
    if settings.lipsync.enabled:
        lipsync = build_lipsync(settings.lipsync, settings.models.dir, device)
    engine = Engine(
        models,
        sandbox,
        settings.pipeline,
        queue_size=settings.engine.queue_size,
        workers_per_device=settings.engine.workers_per_device,
        devices=lanes,
        device_workers=workers,
        services={**SERVICES, LIPSYNC_LANE: lipsync.service} if lipsync else None,
        service_lanes={LIPSYNC_LANE: lipsync.lane} if lipsync else None,
    )
    return Runtime(settings=settings, models=models, sandbox=sandbox, engine=engine, lipsync=lipsync)


# Fields that loggers pass with ``extra=`` and JSON lines carry as keys of their own.
_STRUCTURED_FIELDS = (
    "request_id",
    "service",
    "device",
    "duration_ms",
    "outcome",
    "method",
    "path",
    "route",
    "status",
)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        payload = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _STRUCTURED_FIELDS:
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(settings: Settings) -> None:
    root = logging.getLogger("genserve")
    root.setLevel(settings.logging.level)
    if not any(getattr(h, "_genserve", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler._genserve = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for handler in root.handlers:
        if getattr(handler, "_genserve", False):
            handler.setFormatter(
                _JsonFormatter()
                if settings.logging.json_lines
                else logging.Formatter("%(levelname)s %(name)s: %(message)s")
            )
