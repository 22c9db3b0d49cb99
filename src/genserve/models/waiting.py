"""Waiting for room in a full pool: a load that finds every slot held by models in use waits, up to
the pool's ``capacity_wait_s`` (or a caller's shorter deadline), for one of them to be let go.

A release (a model let go, unloaded, or a failed load) wakes the wait; it is re-checked every
RECHECK_S anyway (one lock round-trip). A model bigger than the whole budget is refused at once:
waiting cannot help it. What still cannot load is refused naming the limit and the wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from genserve.errors import GenserveError
from genserve.models import capacity
from genserve.models.pools import Pool

log = logging.getLogger("genserve.models.manager")
T = TypeVar("T")
RECHECK_S = 0.25


class RoomWaiter:
    """Counts releases under the manager's lock, so waiting loads wake when one happens."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self.releases = 0

    def released(self) -> None:
        """Called with the manager's lock held whenever a model is let go."""
        self.releases += 1
        self._cond.notify_all()

    def retry(
        self,
        attempt: Callable[[], T],
        pool: Pool,
        label: str,
        wait_s: float | None = None,
        check_cancelled: Callable[[], None] | None = None,
    ) -> T:
        """``attempt()`` (an acquire), retried while ``pool`` is full of models in use."""
        limit = pool.capacity_wait_s if wait_s is None else max(min(wait_s, pool.capacity_wait_s), 0.0)
        started = time.monotonic()
        announced = False
        while True:
            with self._cond:
                seen = self.releases
            try:
                return attempt()
            except GenserveError as exc:
                if limit <= 0 or not capacity.is_refusal(exc):
                    raise
                remaining = started + limit - time.monotonic()
                if remaining <= 0 or capacity.never_fits(exc):
                    raise capacity.after_waiting(exc, limit, pool.keys.capacity_wait) from exc
                if not announced:
                    log.info("%s waits for room: %s", label, exc.message)
                    announced = True
            with self._cond:
                self._cond.wait_for(lambda seen=seen: self.releases != seen, min(remaining, RECHECK_S))
            if check_cancelled is not None:
                check_cancelled()
