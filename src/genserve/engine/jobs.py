"""Queued work: a request admitted to a lane now and run later, that a caller can list, delete
while it waits, and cancel while it runs (ComfyUI's prompt queue runs on such a lane).

The lane's executor keeps the order; the table keeps what the executor cannot tell: which jobs
wait and which runs, by id, so ``/queue`` can list them and ``DELETE /queue`` remove some.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel


@dataclass(eq=False)
class Job:
    id: str
    lane: str
    request: BaseModel
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[Any] = field(default_factory=Future)  # the lane's, once admitted
    running: bool = False

    @property
    def done(self) -> bool:
        return self.future.done()


class JobTable:
    """The queued jobs of every lane, in admission order; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def add(self, job: Job) -> None:
        with self._lock:
            if job.id in self._jobs:
                raise KeyError(job.id)
            self._jobs[job.id] = job

    def started(self, job: Job) -> None:
        with self._lock:
            job.running = True

    def finished(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def of(self, lane: str) -> list[Job]:
        """The lane's jobs: running ones first, then the waiting ones in order."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.lane == lane]
        return [j for j in jobs if j.running] + [j for j in jobs if not j.running]
