"""Which backend takes the next job, and which backends are alive to take one.

A request must never wait on (or fail with) a backend that does not answer, so a prober per
backend keeps a health record up to date in the background (``GET /queue`` within
``probe_timeout_s``; slow counts as down), and ``pick`` reads only those records: a dead backend
is simply not a candidate. The score is the backend's load (its own queue
or the bridge's jobs on it, whichever is larger) plus ``affinity_weight`` unless the backend
already ran the workflow's models (it still holds them, so it skips the loading time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from genserve.bridge.backends import Backend, BackendDown

log = logging.getLogger("genserve.workflows.bridge")


@dataclass
class BackendState:
    """The bridge's view of one backend."""

    backend: Backend
    healthy: bool = False
    queue_remaining: int = 0
    error: str | None = "not probed yet"
    probed_at: float = 0.0
    latency_ms: float = 0.0
    inflight: set[str] = field(default_factory=set)
    warm: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def load(self) -> int:
        return max(self.queue_remaining, len(self.inflight))

    @property
    def has_room(self) -> bool:
        return self.healthy and len(self.inflight) < self.backend.max_inflight

    def describe(self) -> str:
        return f"{self.name}: " + ("up" if self.healthy else f"down ({self.error})")


def pick(
    states: Sequence[BackendState], models: frozenset[str], affinity_weight: float
) -> BackendState | None:
    """The healthy backend with room and the lowest score; ties go to the first configured."""
    best: tuple[float, int] | None = None
    chosen = None
    for index, state in enumerate(states):
        if not state.has_room:
            continue
        affine = bool(models) and models <= state.warm
        score = (state.load + (0.0 if affine else affinity_weight), index)
        if best is None or score < best:
            best, chosen = score, state
    return chosen


class Prober:
    """Probes one backend forever; calls ``on_change(state)`` when it goes up or down."""

    def __init__(
        self,
        state: BackendState,
        interval_s: float,
        timeout_s: float,
        on_change: Callable[[BackendState], None],
    ) -> None:
        self.state = state
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.on_change = on_change

    async def probe_once(self) -> None:
        state = self.state
        started = time.monotonic()
        try:
            remaining = await asyncio.wait_for(state.backend.probe(), self.timeout_s)
        except (BackendDown, TimeoutError) as exc:
            error = str(exc) or f"no answer within {self.timeout_s:g} s"
            was = state.healthy
            state.healthy, state.error = False, error
            if was:
                log.warning("backend %s is down: %s", state.name, error)
                self.on_change(state)
        else:
            was = state.healthy
            state.healthy, state.error, state.queue_remaining = True, None, remaining
            if not was:
                log.info("backend %s is up", state.name)
                self.on_change(state)
        state.probed_at = time.time()
        state.latency_ms = (time.monotonic() - started) * 1000

    async def run(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception:  # a prober must outlive any surprise from one backend
                log.exception("probing %s failed", self.state.name)
            await asyncio.sleep(self.interval_s)
