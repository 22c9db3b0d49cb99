"""The bridge queue's records: a job, its state, its results, what a purge removed.

Plain frozen values, apart from ``JobStore`` which reads and writes them, so the dispatcher, the
doors and the tests can hold them without a database at hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class JobState(StrEnum):
    """Where a job stands; the last four are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class Job:
    """One queued workflow run: who asked, which alias, the built graph and where it stands."""

    seq: int
    id: str
    client_id: str
    alias: str
    graph: dict[str, Any]
    state: JobState
    backend: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None


@dataclass(frozen=True)
class ResultFile:
    """One output to keep for ``/history``: its bytes inline (``data``) or in a file (``path``)."""

    name: str
    content_type: str = "application/octet-stream"
    data: bytes | None = None
    path: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.data is None) == (self.path is None):
            raise ValueError(f"result {self.name!r}: give exactly one of data and path")


@dataclass(frozen=True)
class Result(ResultFile):
    """A stored output, with the job and client it belongs to."""

    seq: int = 0
    job_id: str = ""
    client_id: str = ""
    created_at: float = 0.0

    def read_bytes(self) -> bytes:
        return self.data if self.data is not None else Path(str(self.path)).read_bytes()


@dataclass(frozen=True)
class Purged:
    """What ``purge_older_than`` removed; the results' ``path`` files are the caller's to delete."""

    jobs: int
    results: list[Result]
