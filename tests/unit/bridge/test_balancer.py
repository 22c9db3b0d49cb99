"""Backend choice: queue length first, affinity worth ``affinity_weight`` places, dead or full
backends never chosen; and the prober's view of a backend that stops answering or is too slow."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from genserve.bridge.backends import Backend, BackendDown, MessageSink, Output
from genserve.bridge.balancer import BackendState, Prober, pick


class Scripted(Backend):
    """A backend whose probe answers what the test says (a real object, no network)."""

    def __init__(self, name: str, max_inflight: int = 2) -> None:
        super().__init__(name, max_inflight)
        self.queue = 0
        self.down = False
        self.delay = 0.0

    async def probe(self) -> int:
        await asyncio.sleep(self.delay)
        if self.down:
            raise BackendDown(f"{self.name}: connection refused")
        return self.queue

    async def run(self, graph: Mapping[str, Any], job_id: str, on_message: MessageSink) -> list[Output]:
        raise AssertionError("not used here")

    async def free(self) -> None:
        return None


def state(name: str, *, queue: int = 0, healthy: bool = True, warm: set[str] | None = None) -> BackendState:
    found = BackendState(Scripted(name), healthy=healthy, queue_remaining=queue)
    found.warm = warm or set()
    return found


MODELS = frozenset({"unet.safetensors", "vae.safetensors"})


def test_shortest_queue_wins_and_ties_go_to_the_first() -> None:
    a, b = state("a", queue=3), state("b", queue=1)
    assert pick([a, b], MODELS, 1.0) is b
    assert pick([state("a"), state("b")], MODELS, 1.0).name == "a"


def test_affinity_is_worth_its_weight_in_queue_places() -> None:
    cold, warm = state("cold", queue=0), state("warm", queue=0, warm=set(MODELS))
    assert pick([cold, warm], MODELS, 1.0) is warm
    warm.queue_remaining = 1  # one more job queued cancels the affinity of weight 1 (tie: first)
    assert pick([cold, warm], MODELS, 1.0) is cold
    warm.queue_remaining = 2
    assert pick([cold, warm], MODELS, 1.0) is cold
    assert pick([cold, warm], MODELS, 3.0) is warm
    # Models partly loaded are not affinity.
    half = state("half", warm={"unet.safetensors"})
    assert pick([half, state("other")], MODELS, 1.0) is half  # first of a tie, not affinity


def test_dead_and_full_backends_are_never_picked() -> None:
    dead, full = state("dead", healthy=False), state("full")
    full.inflight = {"j1", "j2"}
    assert pick([dead, full], MODELS, 1.0) is None
    alive = state("alive", queue=10)
    assert pick([dead, full, alive], MODELS, 1.0) is alive


def test_prober_marks_down_on_error_and_on_slowness_and_up_again() -> None:
    backend = Scripted("b")
    found = BackendState(backend)
    changes: list[bool] = []
    prober = Prober(found, interval_s=0.01, timeout_s=0.05, on_change=lambda s: changes.append(s.healthy))

    async def scenario() -> None:
        await prober.probe_once()
        assert found.healthy and found.error is None
        backend.down = True
        await prober.probe_once()
        assert not found.healthy and "connection refused" in str(found.error)
        backend.down, backend.delay = False, 0.2  # answers, but too slowly
        await prober.probe_once()
        assert not found.healthy and "0.05 s" in str(found.error)
        backend.delay, backend.queue = 0.0, 4
        await prober.probe_once()
        assert found.healthy and found.queue_remaining == 4 and found.load == 4

    asyncio.run(scenario())
    assert changes == [True, False, True]
