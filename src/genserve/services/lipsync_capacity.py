"""Waiting for room when every ``lipsync.max_models`` slot holds a model in use.

The shared ModelManager refuses a load at once (RESOURCE_EXHAUSTED) when every loaded model is
pinned by a request: right for the diffusion lanes, but a lip-sync client alternating two models
on a server with one slot saw half its requests fail as a gRPC status, although the other model
was free again a few hundred ms later. The lip-sync path therefore retries here: it waits until a
lip-sync request lets a model go (or a model is unloaded), then tries the load again, so the
manager evicts the now idle model. The wait is bounded by ``lipsync.capacity_wait_s`` and by the
request's deadline (the engine cancels the run when it passes); what still cannot load is refused
with a message naming the setting, as an application error (``success=false``).

Kept out of the manager so other model kinds keep its refuse-at-once behaviour.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from genserve.errors import ErrorCode, GenserveError

log = logging.getLogger("genserve.lipsync")
T = TypeVar("T")
GIB = 1024**3
# A wait is re-checked this often even without a release seen here (an unload from another door,
# a failed load): the retry is one lock round-trip, so a missed wake-up costs at most this delay.
RECHECK_S = 0.25


def _is_capacity(exc: GenserveError) -> bool:
    """The manager's capacity refusals carry the limit they hit; a full queue does not."""
    return exc.code is ErrorCode.RESOURCE_EXHAUSTED and (
        "max_loaded" in exc.details or "budget_bytes" in exc.details
    )


def _never_fits(exc: GenserveError) -> bool:
    """A model bigger than the whole memory budget: waiting for others to finish cannot help."""
    needed, budget = exc.details.get("needed_bytes"), exc.details.get("budget_bytes")
    return needed is not None and budget is not None and needed > budget


def refusal(exc: GenserveError, model_id: str, waited_s: float) -> GenserveError:
    """The manager's refusal in the lip-sync server's terms: its own setting names, not the manager's.

    The ``setting`` detail marks it as the server's answer to this request (the gRPC door puts it
    in the response, like the spec's other application errors), not transport trouble.
    """
    waited = f"none became free within {waited_s:g} s (lipsync.capacity_wait_s)"
    if "budget_bytes" in exc.details:
        device, budget = exc.details.get("device", "?"), exc.details["budget_bytes"] / GIB
        setting = "lipsync.max_memory_gb"
        if _never_fits(exc):
            why = f"it needs {exc.details['needed_bytes'] / GIB:.2f} GB, more than {setting}={budget:g}"
        else:
            why = f"{setting}={budget:g} on {device} is held by models in use and {waited}"
    else:
        setting = "lipsync.max_models"
        why = f"all {setting}={exc.details['max_loaded']} loaded models are in use and {waited}"
    return GenserveError(
        ErrorCode.RESOURCE_EXHAUSTED,
        f"Model '{model_id}' cannot be loaded: {why}",
        field="model_id",
        setting=setting,
    )


class CapacityWaiter:
    """Counts releases of lip-sync models so that requests waiting for room wake when one happens."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._cond = threading.Condition()
        self._releases = 0

    def released(self) -> None:
        """Called after a lip-sync request lets its model go, and after an unload."""
        with self._cond:
            self._releases += 1
            self._cond.notify_all()

    def retry(
        self,
        attempt: Callable[[], T],
        model_id: str,
        check_cancelled: Callable[[], None] = lambda: None,
        wait_s: float | None = None,
    ) -> T:
        """``attempt()`` (a model manager ``use`` or ``load``), retried while capacity is in use.

        ``check_cancelled`` raises when the request is cancelled or past its deadline, which ends
        the wait early; ``wait_s`` shortens the setting (LoadModel passes its client's deadline).
        """
        limit = self.wait_s if wait_s is None else max(min(wait_s, self.wait_s), 0.0)
        started = time.monotonic()
        announced = False
        while True:
            with self._cond:
                seen = self._releases
            try:
                return attempt()
            except GenserveError as exc:
                if not _is_capacity(exc):
                    raise
                remaining = started + limit - time.monotonic()
                if remaining <= 0 or _never_fits(exc):
                    raise refusal(exc, model_id, limit) from exc
                if not announced:
                    log.info("lip-sync model %s waits for a free slot: %s", model_id, exc.message)
                    announced = True
            self._wait(seen, min(remaining, RECHECK_S))
            check_cancelled()

    def _wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._releases != seen, timeout)


def no_wait() -> CapacityWaiter:
    """For callers without lip-sync parts (tests, scripts): refusals translated, no waiting."""
    return CapacityWaiter(0.0)
