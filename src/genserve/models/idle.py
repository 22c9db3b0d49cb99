"""Unloading models idle past their pool's ``idle_timeout_s``, on a background thread.

A load counts as a use, so a model loaded ahead of requests (a preload, an explicit load) gets its
full idle time too: its clock starts when a sweep first sees that load, at most one period late.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from genserve.errors import GenserveError

if TYPE_CHECKING:
    from genserve.models.manager import ModelManager

log = logging.getLogger("genserve.models.manager")
LONGEST_PERIOD_S = 30.0


class IdleReaper:
    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # (kind, name, load count) -> when a sweep first saw that load
        self._loads_seen: dict[tuple[str, str, int], float] = {}
        self._lock = threading.Lock()

    def _timeouts(self) -> list[float]:
        return [p.idle_timeout_s for p in self._manager.pools if p.idle_timeout_s > 0]

    def start(self) -> None:
        timeouts = self._timeouts()
        if not timeouts or self._thread is not None:
            return
        period = min(min(timeouts) / 4, LONGEST_PERIOD_S)
        self._thread = threading.Thread(target=self._run, args=(period,), name="genserve-idle", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.sweep()

    def sweep(self, idle_s: float | None = None) -> list[str]:
        """Unloads the models not in use whose last use (or load) is older than their pool's
        timeout (``idle_s`` instead, for every pool, when given)."""
        manager, now, gone = self._manager, time.time(), []
        loaded = manager.loaded()
        with self._lock:
            current = {(s.kind, s.name, s.load_count) for s in loaded}
            self._loads_seen = {k: t for k, t in self._loads_seen.items() if k in current}
            seen = {key: self._loads_seen.setdefault(key, now) for key in current}
        for stats in loaded:
            limit = manager.pool(stats.kind).idle_timeout_s if idle_s is None else idle_s
            last = max(stats.last_used or 0.0, seen[(stats.kind, stats.name, stats.load_count)])
            if (idle_s is None and limit <= 0) or stats.pinned or now - last < limit:
                continue
            try:
                if manager.unload(stats.kind, stats.name, timeout=0):
                    log.info("unloaded %s/%s: idle for %.0f s", stats.kind, stats.name, now - last)
                    gone.append(stats.name)
            except GenserveError:
                pass  # picked up by a request meanwhile: it stays
        return gone
