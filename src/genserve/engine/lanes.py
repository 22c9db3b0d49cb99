"""The engine's lanes: a thread pool with its admission counters, per device or per service."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from genserve.engine.batching import DynamicBatcher


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
    is_device: bool = True  # a device lane: its services run on that device
    batcher: DynamicBatcher | None = None


@dataclass(frozen=True)
class ServiceLane:
    """A lane for the services that name it: own workers and queue, and the batcher that merges
    the runs of its services that declare batching."""

    workers: int
    queue_size: int
    batcher: DynamicBatcher | None = None
