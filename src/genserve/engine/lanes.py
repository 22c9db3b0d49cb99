"""The engine's lanes: a thread pool with its admission counters, per device or per service."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genserve.engine.batching import DynamicBatcher

if TYPE_CHECKING:
    from genserve.models.manager import ModelManager


@dataclass(frozen=True)
class DeviceLoad:
    """A snapshot of one device's admission counters, for health and metrics."""

    device: str
    running: int
    waiting: int
    workers: int
    capacity: int  # most requests admitted at once: workers + queue size


@dataclass
class Lane:
    executor: ThreadPoolExecutor
    workers: int
    queue_size: int
    admitted: int = 0  # running + waiting; the number the queue limit applies to
    running: int = 0
    models: ModelManager | None = None  # a service lane's own manager; None = the engine's
    batcher: DynamicBatcher | None = None


@dataclass(frozen=True)
class ServiceLane:
    """A lane for the services that name it: own workers, queue, model manager and batching."""

    workers: int
    queue_size: int
    models: ModelManager
    batcher: DynamicBatcher | None = None
