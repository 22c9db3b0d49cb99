"""What the engine tells the outside while it runs: progress and streamed chunks for the caller, a
record per run for observers (metrics) and the log. Kept apart from the engine so doors can type
against it alone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from genserve.services.base import ProgressEvent

logger = logging.getLogger("genserve.engine")

ProgressCallback = Callable[[ProgressEvent], None]
ChunkCallback = Callable[[BaseModel], None]
EventT = TypeVar("EventT")


@dataclass(frozen=True)
class RunRecord:
    """What an observer (metrics) learns of each finished request."""

    service: str
    device: str
    seconds: float
    outcome: str  # "ok", "cancelled" or an error code


RunObserver = Callable[[RunRecord], None]


def discard(_: ProgressEvent) -> None:
    return None


def log_run(record: RunRecord, request_id: str) -> None:
    """One structured line per finished request, whichever way (submit or stream) it ran."""
    duration_ms = record.seconds * 1000
    fields = {
        "request_id": request_id,
        "service": record.service,
        "device": record.device,
        "duration_ms": round(duration_ms, 1),
        "outcome": record.outcome,
    }
    logger.info(
        "request_id=%s service=%s device=%s duration_ms=%.1f outcome=%s",
        request_id,
        record.service,
        record.device,
        duration_ms,
        record.outcome,
        extra=fields,
    )


class ProgressRelay(Generic[EventT]):
    """Carries events (progress, streamed chunks) from the worker thread to the caller's loop, in the
    order the worker sent them, and stops once the caller has gone.

    A callback that outlives its request (a closed WebSocket, a finished progress bar) must not be
    called, and a failing callback must not fail the run it only watches.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[[EventT], None], request_id: str
    ) -> None:
        self._loop = loop
        self._callback = callback
        self._request_id = request_id
        self.open = True

    def __call__(self, event: EventT) -> None:
        if not self.open:
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            self.open = False

    def _deliver(self, event: EventT) -> None:
        if not self.open:
            return
        try:
            self._callback(event)
        except Exception:
            logger.exception("progress callback failed (request_id=%s)", self._request_id)
