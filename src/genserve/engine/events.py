"""What the engine tells the outside while it runs: progress for the caller, a record per run
for observers (metrics). Kept apart from the engine so doors can type against it alone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from genserve.services.base import ProgressEvent

logger = logging.getLogger("genserve.engine")

ProgressCallback = Callable[[ProgressEvent], None]


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


class ProgressRelay:
    """Carries events from the worker thread to the caller's loop, and stops once the caller has gone.

    A callback that outlives its request (a closed WebSocket, a finished progress bar) must not be
    called, and a failing callback must not fail the run it only watches.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: ProgressCallback, request_id: str) -> None:
        self._loop = loop
        self._callback = callback
        self._request_id = request_id
        self.open = True

    def __call__(self, event: ProgressEvent) -> None:
        if not self.open:
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            self.open = False

    def _deliver(self, event: ProgressEvent) -> None:
        if not self.open:
            return
        try:
            self._callback(event)
        except Exception:
            logger.exception("progress callback failed (request_id=%s)", self._request_id)
