"""ModelManager: load callbacks, caller-timed requests, LFU eviction and eviction counts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.models.manager import ModelManager
from genserve.models.slots import ModelStats
from tests.unit.models.conftest import MIB, VAE, SafetensorsLoader, loaded_names, manager_for, started

pytestmark = pytest.mark.timeout(60)


def stats_of(manager: ModelManager, name: str) -> ModelStats:
    return next(s for s in manager.stats() if s.name == name)


def test_on_load_is_called_only_in_the_call_that_loaded(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader(delay=0.05))
    loads: list[float] = []
    with manager.use(VAE, "a.safetensors", on_load=loads.append):
        pass
    assert len(loads) == 1 and loads[0] >= 50
    assert loads[0] == stats_of(manager, "a.safetensors").load_time_ms
    with manager.use(VAE, "a.safetensors", on_load=loads.append):
        pass
    assert len(loads) == 1


def test_on_load_is_called_once_when_many_threads_ask_at_once(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader(delay=0.2))
    start = threading.Barrier(4, timeout=5)
    per_thread: list[list[float]] = [[] for _ in range(4)]

    def request(i: int) -> None:
        start.wait()
        with manager.use(VAE, "a.safetensors", on_load=per_thread[i].append):
            pass

    for worker in [started(lambda i=i: request(i)) for i in range(4)]:
        worker.finish()
    assert sorted(len(calls) for calls in per_thread) == [0, 0, 0, 1]


def test_load_calls_on_load_only_when_it_loads(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader())
    loads: list[float] = []
    stats = manager.load(VAE, "a.safetensors", on_load=loads.append)
    assert stats.loaded and loads == [stats.load_time_ms]
    manager.load(VAE, "a.safetensors", on_load=loads.append)
    with manager.use(VAE, "a.safetensors", on_load=loads.append):
        pass
    assert len(loads) == 1
    assert stats_of(manager, "a.safetensors").request_count == 1  # load() is not a request


def test_uncounted_use_and_record_count_only_what_the_caller_reports(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader())
    with manager.use(VAE, "a.safetensors", count=False):
        pass
    s = stats_of(manager, "a.safetensors")
    assert (s.request_count, s.total_inference_ms) == (0, 0.0)
    assert s.last_used is not None  # still used: idle-unload and LRU see it

    manager.record(VAE, "a.safetensors", 12.5)
    manager.record(VAE, "a.safetensors", 7.5, requests=3)
    s = stats_of(manager, "a.safetensors")
    assert (s.request_count, s.total_inference_ms, s.average_inference_ms) == (4, 20.0, 5.0)

    manager.record(VAE, "b.safetensors", 1.0)  # never loaded: nothing to count, no error
    manager.record(VAE, "missing.safetensors", 1.0)
    assert [s.name for s in manager.stats()] == ["a.safetensors"]


def test_lfu_evicts_the_least_used_idle_model(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader, max_loaded=2, eviction="lfu")
    for _ in range(3):
        with manager.use(VAE, "a.safetensors"):
            pass
    with manager.use(VAE, "b.safetensors"):
        pass
    with manager.use(VAE, "b.safetensors"):
        pass  # b is the most recent, but used less than a: LRU would evict a
    manager.load(VAE, "c.safetensors")
    assert loaded_names(manager) == {"a.safetensors", "c.safetensors"}
    assert loader.released == ["b.safetensors"]


def test_lfu_ties_go_to_the_least_recently_used(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader, max_loaded=2, eviction="lfu")
    for name in ("a.safetensors", "b.safetensors", "a.safetensors", "b.safetensors"):
        with manager.use(VAE, name):
            pass  # two requests each; a last touched before b
    manager.load(VAE, "c.safetensors")
    assert loader.released == ["a.safetensors"]


def test_lfu_never_evicts_a_pinned_model(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader, max_loaded=2, eviction="lfu")
    with manager.use(VAE, "a.safetensors"):
        for _ in range(3):
            with manager.use(VAE, "b.safetensors"):
                pass
        manager.load(VAE, "c.safetensors")  # a is least used but in use: b goes
    assert loader.released == ["b.safetensors"]


def test_evictions_count_capacity_evictions_but_not_unloads(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader(), max_loaded=1)
    manager.load(VAE, "a.safetensors")
    manager.load(VAE, "b.safetensors")  # evicts a
    assert manager.unload(VAE, "b.safetensors")  # asked for: not an eviction
    manager.load(VAE, "a.safetensors")
    manager.load(VAE, "b.safetensors")  # evicts a again
    a, b = stats_of(manager, "a.safetensors"), stats_of(manager, "b.safetensors")
    assert (a.evictions, a.load_count, a.loaded) == (2, 2, False)
    assert (b.evictions, b.load_count, b.loaded) == (0, 2, True)
    assert a.to_dict()["evictions"] == 2


def test_memory_budget_evictions_are_counted(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader(), memory_budget_bytes={"cpu": int(3.5 * MIB)})
    manager.load(VAE, "a.safetensors")  # 1 MiB
    manager.load(VAE, "big.safetensors")  # 3 MiB: a has to go
    assert loaded_names(manager) == {"big.safetensors"}
    assert stats_of(manager, "a.safetensors").evictions == 1


def test_an_unknown_eviction_policy_is_refused(models: Path) -> None:
    with pytest.raises(GenserveError) as info:
        manager_for(models, SafetensorsLoader(), eviction="fifo")
    assert info.value.code is ErrorCode.INVALID_INPUT and "eviction: 'fifo'" in info.value.message
