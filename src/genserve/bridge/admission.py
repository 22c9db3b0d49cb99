"""How long a bridge client may wait: bounds on the queue, and the order jobs leave it.

The queue is durable and cheap to join, so without bounds one client could queue hundreds of
jobs in seconds and every other client would wait behind all of them. Two bounds keep it finite:
``bridge.max_queued_per_client`` jobs waiting per client and ``bridge.max_queued`` in all; a job
past either is refused at once (429 with ``Retry-After``), never queued to wait without end.
The check and the insert happen under one lock, so a burst of concurrent submits cannot slip
past a bound between them (the store has one writer per server).

Jobs leave the queue round-robin across clients: the first round takes one waiting job of each
client, the client served longest ago first (one never served, or with nothing waiting since its
last turn, before any other; among those, the one waiting longest), the second round each
client's next, and so on. A client with one job therefore waits behind at most one job of every
other client, however many those queued. Within a client the order stays first in, first out,
and a job put back after its backend was lost keeps its old place.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from genserve.errors import ErrorCode, GenserveError
from genserve.storage.jobs import Job, JobState, JobStore


@dataclass(frozen=True)
class QueueLimits:
    """``per_client`` and ``total`` count waiting (queued) jobs; running ones are not counted."""

    per_client: int = 16
    total: int = 256
    retry_after_s: int = 10


class Admission:
    """Queues a job only when both bounds leave room (blocking: SQLite)."""

    def __init__(self, store: JobStore, limits: QueueLimits) -> None:
        self.store = store
        self.limits = limits
        self._lock = threading.Lock()

    def enqueue(self, client_id: str, alias: str, graph: Mapping[str, Any]) -> Job:
        """The queued job, or RESOURCE_EXHAUSTED naming the bound that refused it."""
        limits = self.limits
        with self._lock:
            waiting = len(self.store.jobs_for_client(client_id, (JobState.QUEUED,)))
            if waiting >= limits.per_client:
                raise GenserveError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"clientId {client_id!r} already has {waiting} jobs waiting, the most one client may "
                    f"queue (bridge.max_queued_per_client); retry once one has started",
                    retry_after_s=limits.retry_after_s,
                )
            total = self.store.queue_length()
            if total >= limits.total:
                raise GenserveError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"the bridge queue is full: {total} jobs waiting (bridge.max_queued); retry later",
                    retry_after_s=limits.retry_after_s,
                )
            return self.store.enqueue(client_id, alias, graph)


def fair_order(queued: Sequence[Job], served: Mapping[str, int]) -> list[Job]:
    """The queued jobs in the order they are handed out: round-robin. ``served`` gives each client's
    last turn (larger is later); a client missing from it has not been served while waiting."""
    by_client: dict[str, list[Job]] = {}
    for job in sorted(queued, key=lambda j: j.seq):
        by_client.setdefault(job.client_id, []).append(job)
    clients = sorted(by_client, key=lambda c: (served.get(c, -1), by_client[c][0].seq))
    rounds = itertools.zip_longest(*(by_client[c] for c in clients))
    return [job for round_ in rounds for job in round_ if job is not None]


def position(queued: Sequence[Job], served: Mapping[str, int], client_id: str) -> int | None:
    """Where the client's next job stands in the hand-out order (1: next), None if it has none."""
    for place, job in enumerate(fair_order(queued, served), start=1):
        if job.client_id == client_id:
            return place
    return None
