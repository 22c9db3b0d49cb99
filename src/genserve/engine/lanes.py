"""The engine's lanes: a thread pool with its admission counters, per device or per service.

Admission is counted per lane and refused once its queue is full, because a server that buffers
without bound falls over instead of saying "try later". The counters are guarded by one lock that
is never held while a service runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from genserve.engine.batching import DynamicBatcher
from genserve.errors import ErrorCode, GenserveError


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


class LaneTable:
    """Every lane by name, the devices' first; admission, counters and shutdown."""

    def __init__(
        self,
        devices: Sequence[str],
        queue_size: int,
        workers_per_device: int,
        device_workers: Mapping[str, int],
        service_lanes: Mapping[str, ServiceLane],
    ) -> None:
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        names = list(devices)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"devices must be a non-empty list of distinct names, got {names}")
        unknown = sorted(set(device_workers) - set(names))
        if unknown:
            raise ValueError(f"device_workers names devices this engine does not run: {', '.join(unknown)}")
        self._lanes: dict[str, Lane] = {}
        for name in names:
            workers = device_workers.get(name, workers_per_device)
            if workers < 1:
                raise ValueError(f"workers for device {name} must be >= 1, got {workers}")
            self._lanes[name] = Lane(_pool(name, workers), workers, queue_size)
        self.devices = tuple(self._lanes)
        for name, spec in service_lanes.items():
            if name in self._lanes or spec.workers < 1 or spec.queue_size < 0:
                raise ValueError(f"service lane {name!r}: a new name, workers >= 1 and queue_size >= 0")
            pool = _pool(name, spec.workers)
            self._lanes[name] = Lane(
                pool, spec.workers, spec.queue_size, is_device=False, batcher=spec.batcher
            )
        self._lock = threading.Lock()
        self._closed = False

    def __contains__(self, name: object) -> bool:
        return name in self._lanes

    def get(self, name: str) -> Lane:
        lane = self._lanes.get(name)
        if lane is None:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"device: unknown device {name!r}; this server runs on {', '.join(self._lanes)}",
                field="device",
            )
        return lane

    @property
    def accepting(self) -> bool:
        with self._lock:
            return not self._closed

    def loads(self, names: Sequence[str] | None = None) -> list[DeviceLoad]:
        with self._lock:
            return [_load_of(name, self._lanes[name]) for name in (names or list(self._lanes))]

    def least_busy(self) -> str:
        """The device with the fewest admitted requests per worker; ties go to the first listed."""
        with self._lock:
            return min(self.devices, key=lambda name: self._lanes[name].admitted / self._lanes[name].workers)

    def admit(self, name: str, work: Callable[..., Any], *args: Any) -> Future[Any]:
        """Count the request in, or refuse it: closed (UNAVAILABLE) or full (RESOURCE_EXHAUSTED)."""
        lane = self.get(name)
        with self._lock:
            if self._closed:
                raise GenserveError(ErrorCode.UNAVAILABLE, "engine is shutting down; request refused")
            if lane.admitted >= lane.queue_size + lane.workers:
                waiting = lane.admitted - lane.running
                raise GenserveError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"queue for {_label(name, lane)} is full ({waiting} waiting)",
                    device=name,
                    waiting=waiting,
                    queue_size=lane.queue_size,
                )
            lane.admitted += 1
        try:
            future = lane.executor.submit(work, *args)
        except RuntimeError:  # the executor shut down between the check above and this submit
            self._release(lane)
            raise GenserveError(ErrorCode.UNAVAILABLE, "engine is shutting down; request refused") from None
        # Added before asyncio wraps the future, so the slot is free by the time the caller resumes.
        future.add_done_callback(lambda _: self._release(lane))
        return future

    def _release(self, lane: Lane) -> None:
        with self._lock:
            lane.admitted -= 1

    def started(self, lane: Lane) -> None:
        with self._lock:
            lane.running += 1

    def ended(self, lane: Lane) -> None:
        with self._lock:
            lane.running -= 1

    def close(self) -> None:
        """Refuse new work, drop what has not started, and wait for running work to finish."""
        with self._lock:
            self._closed = True
        for lane in self._lanes.values():
            lane.executor.shutdown(wait=True, cancel_futures=True)


def _pool(name: str, workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"genserve-{name}")


def _load_of(name: str, lane: Lane) -> DeviceLoad:
    return DeviceLoad(
        name, lane.running, lane.admitted - lane.running, lane.workers, lane.workers + lane.queue_size
    )


def _label(name: str, lane: Lane) -> str:
    return f"device {name}" if lane.is_device else name
