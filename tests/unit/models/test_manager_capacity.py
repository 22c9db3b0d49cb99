"""ModelManager: capacity (count, memory budget, pinning) and per-model stats."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import module_bytes
from tests.unit.models.conftest import MIB, VAE, SafetensorsLoader, loaded_names, manager_for

pytestmark = pytest.mark.timeout(60)


def test_max_loaded_evicts_the_least_recently_used(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader, max_loaded=2)
    manager.load(VAE, "a.safetensors")
    manager.load(VAE, "b.safetensors")
    with manager.use(VAE, "a.safetensors"):
        pass  # a is now more recent than b
    manager.load(VAE, "c.safetensors")
    assert loaded_names(manager) == {"a.safetensors", "c.safetensors"}
    assert loader.released == ["b.safetensors"]
    manager.load(VAE, "b.safetensors")
    assert loaded_names(manager) == {"b.safetensors", "c.safetensors"}
    assert loader.released == ["b.safetensors", "a.safetensors"]


def test_pinned_models_are_never_evicted(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader, max_loaded=2)
    with manager.use(VAE, "a.safetensors"):
        with manager.use(VAE, "b.safetensors"):
            with pytest.raises(GenserveError) as info:
                manager.load(VAE, "c.safetensors")
            assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
            assert "max_loaded=2" in info.value.message
            assert loaded_names(manager) == {"a.safetensors", "b.safetensors"}
        # a is older but still pinned: b goes instead.
        manager.load(VAE, "c.safetensors")
        assert loaded_names(manager) == {"a.safetensors", "c.safetensors"}
    assert loader.released == ["b.safetensors"]
    assert "c.safetensors" in loader.calls


def test_memory_budget_evicts_lru_models_on_that_device(models: Path) -> None:
    budget = int(2.5 * MIB)
    loader = SafetensorsLoader()
    manager = manager_for(models, loader, memory_budget_bytes={"cpu": budget})
    manager.load(VAE, "a.safetensors")
    manager.load(VAE, "b.safetensors")
    assert [s.memory_bytes for s in manager.loaded()] == [MIB, MIB]
    manager.load(VAE, "c.safetensors")
    assert loaded_names(manager) == {"b.safetensors", "c.safetensors"}
    assert loader.released == ["a.safetensors"]

    with (
        manager.use(VAE, "b.safetensors"),
        manager.use(VAE, "c.safetensors"),
        pytest.raises(GenserveError) as info,
    ):
        manager.load(VAE, "d.safetensors")
    error = info.value
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED
    assert error.details["device"] == "cpu"
    assert error.details["needed_bytes"] == MIB  # its tensors in the compute dtype, not the file's size
    assert error.details["available_bytes"] == budget - 2 * MIB
    assert "cpu" in error.message and str(error.details["needed_bytes"]) in error.message

    with pytest.raises(GenserveError) as info:
        manager.load(VAE, "big.safetensors")
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "whole budget" in info.value.message
    assert loaded_names(manager) == {"b.safetensors", "c.safetensors"}  # a refusal evicts nothing


def test_budget_uses_the_real_size_after_loading(models: Path) -> None:
    # half.safetensors is 1 MiB of float16 on disk but 2 MiB as float32 in memory.
    manager = manager_for(models, SafetensorsLoader(), memory_budget_bytes={"cpu": int(2.5 * MIB)})
    manager.load(VAE, "a.safetensors")
    stats = manager.load(VAE, "half.safetensors")
    assert stats.memory_bytes == 2 * MIB
    assert loaded_names(manager) == {"half.safetensors"}


def test_budget_of_another_device_does_not_limit_the_cpu(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader(), memory_budget_bytes={"cuda:0": 1})
    for name in ("a", "b", "c", "big"):
        manager.load(VAE, f"{name}.safetensors")
    assert len(manager.loaded()) == 4


def test_stats_count_requests_time_and_memory(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader(delay=0.3))
    before = time.time()
    with manager.use(VAE, "a.safetensors") as model:
        assert manager.stats()[0].pinned == 1
    for _ in range(2):
        with manager.use(VAE, "a.safetensors"):
            time.sleep(0.05)
    with pytest.raises(ValueError), manager.use(VAE, "a.safetensors"):
        time.sleep(0.05)
        raise ValueError("a failing request still counts")
    (stats,) = manager.stats()
    assert stats.kind == "vae" and stats.name == "a.safetensors"
    assert stats.loaded and stats.device == "cpu" and stats.pinned == 0
    assert stats.memory_bytes == module_bytes(model) == MIB
    assert stats.request_count == 4
    assert 150 <= stats.total_inference_ms < 300  # the 300 ms load is not counted as inference
    assert stats.average_inference_ms == pytest.approx(stats.total_inference_ms / 4)
    assert stats.load_time_ms >= 300
    assert stats.last_used is not None and before <= stats.last_used <= time.time()
    assert stats.to_dict()["request_count"] == 4


def test_stats_survive_unload_and_keep_counting(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader)
    for _ in range(2):
        with manager.use(VAE, "a.safetensors"):
            pass
    assert manager.unload(VAE, "a.safetensors") is True
    assert manager.unload(VAE, "a.safetensors") is False
    (stats,) = manager.stats()
    assert (stats.loaded, stats.device, stats.memory_bytes, stats.request_count) == (False, None, 0, 2)
    assert manager.loaded() == []
    assert loader.released == ["a.safetensors"]
    with manager.use(VAE, "a.safetensors"):
        pass
    (stats,) = manager.stats()
    assert stats.loaded and stats.request_count == 3
    assert loader.calls == ["a.safetensors", "a.safetensors"]
