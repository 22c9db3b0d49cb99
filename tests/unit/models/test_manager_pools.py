"""One ModelManager, several pools: each kind under its own pool's limits, eviction, capacity wait
and idle timeout."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.models import waiting
from genserve.models.pools import Pool, PoolKeys
from genserve.models.registry import ModelKind
from tests.unit.models.conftest import VAE, SafetensorsLoader, loaded_names, manager_for, started

pytestmark = pytest.mark.timeout(60)
TEXT = ModelKind.TEXT_ENCODER
KEYS = PoolKeys("text.max", "text.budget", "text.wait")


def text_pool(**rules: object) -> Pool:
    return Pool("text", frozenset({TEXT}), **rules)  # type: ignore[arg-type]


def test_each_pool_counts_only_its_own_kinds(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader(), max_loaded=1, pools=[text_pool(max_loaded=1)])
    manager.load(VAE, "a.safetensors")
    manager.load(TEXT, "t.safetensors")  # its own pool: the VAE stays
    assert loaded_names(manager) == {"a.safetensors", "t.safetensors"}
    manager.load(VAE, "b.safetensors")  # the default pool is full: its own LRU model goes
    assert loaded_names(manager) == {"b.safetensors", "t.safetensors"}
    assert manager.pool(TEXT).name == "text" and manager.pool(VAE).name == "models"
    assert [p.name for p in manager.pools] == ["models", "text"]


def test_a_kind_in_two_pools_is_refused(models: Path) -> None:
    with pytest.raises(GenserveError, match="text_encoders is in two pools"):
        manager_for(models, SafetensorsLoader(), pools=[text_pool(), Pool("again", frozenset({TEXT}))])


def hold(manager: object, name: str, seconds: float) -> threading.Event:
    """Pins ``name`` on a thread for ``seconds``; the event is set once it is pinned."""
    inside = threading.Event()

    def run() -> None:
        with manager.use(TEXT, name):  # type: ignore[attr-defined]
            inside.set()
            time.sleep(seconds)

    started(run)
    assert inside.wait(10)
    return inside


def with_second_text_model(models: Path) -> None:
    (models / "text_encoders" / "u.safetensors").write_bytes(
        (models / "text_encoders" / "t.safetensors").read_bytes()
    )


def test_a_release_wakes_a_load_waiting_for_room(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "RECHECK_S", 30.0)  # only the release can wake it in time
    with_second_text_model(models)
    manager = manager_for(models, SafetensorsLoader(), pools=[text_pool(max_loaded=1, capacity_wait_s=30)])
    hold(manager, "t.safetensors", 0.2)
    began = time.monotonic()
    manager.load(TEXT, "u.safetensors")
    assert 0.1 < time.monotonic() - began < 5
    assert loaded_names(manager) == {"u.safetensors"}


def test_a_pool_that_stays_full_is_refused_after_its_wait_naming_it(models: Path) -> None:
    with_second_text_model(models)
    manager = manager_for(
        models, SafetensorsLoader(), pools=[text_pool(max_loaded=1, capacity_wait_s=0.4, keys=KEYS)]
    )
    hold(manager, "t.safetensors", 3)
    began = time.monotonic()
    with pytest.raises(GenserveError) as info:
        manager.load(TEXT, "u.safetensors")
    assert time.monotonic() - began >= 0.4
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "text.max=1 models are loaded" in info.value.message
    assert info.value.message.endswith("none became free within 0.4 s (text.wait)")
    assert info.value.details["waited_s"] == 0.4 and info.value.details["max_loaded"] == 1


def test_a_shorter_wait_wins_and_no_wait_refuses_at_once(models: Path) -> None:
    with_second_text_model(models)
    manager = manager_for(models, SafetensorsLoader(), pools=[text_pool(max_loaded=1, capacity_wait_s=60)])
    hold(manager, "t.safetensors", 3)
    began = time.monotonic()
    with pytest.raises(GenserveError, match=r"within 0\.2 s"):
        manager.load(TEXT, "u.safetensors", wait_s=0.2)
    assert time.monotonic() - began < 2
    other = manager_for(models, SafetensorsLoader(), max_loaded=1)  # the default: no wait
    with other.use(VAE, "a.safetensors"):
        began = time.monotonic()
        with pytest.raises(GenserveError) as info:
            other.load(VAE, "b.safetensors")
        assert time.monotonic() - began < 0.2 and "waited_s" not in info.value.details


def test_a_model_bigger_than_the_budget_is_refused_without_waiting(models: Path) -> None:
    rules = {"capacity_wait_s": 60, "memory_budget_bytes": {"cpu": 1024}}
    manager = manager_for(models, SafetensorsLoader(), pools=[text_pool(**rules)])
    began = time.monotonic()
    with pytest.raises(GenserveError) as info:
        manager.load(TEXT, "t.safetensors")
    assert time.monotonic() - began < 2 and "whole budget" in info.value.message


def test_a_cancelled_caller_stops_waiting(models: Path) -> None:
    with_second_text_model(models)
    manager = manager_for(models, SafetensorsLoader(), pools=[text_pool(max_loaded=1, capacity_wait_s=60)])
    hold(manager, "t.safetensors", 3)

    def cancelled() -> None:
        raise GenserveError(ErrorCode.CANCELLED, "request r was cancelled")

    began = time.monotonic()
    with pytest.raises(GenserveError) as info, manager.use(TEXT, "u.safetensors", check_cancelled=cancelled):
        pass
    assert info.value.code is ErrorCode.CANCELLED and time.monotonic() - began < 5


def test_other_errors_are_not_waited_on(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader(), pools=[text_pool(capacity_wait_s=60)])
    began = time.monotonic()
    with pytest.raises(GenserveError) as info:
        manager.load(TEXT, "missing.safetensors")
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND and time.monotonic() - began < 2


def test_only_pools_with_an_idle_timeout_unload_idle_models(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader(), pools=[text_pool(idle_timeout_s=0.2)])
    manager.load(VAE, "a.safetensors")
    manager.load(TEXT, "t.safetensors")
    assert manager.unload_idle() == []  # nothing idle that long yet
    time.sleep(0.3)
    assert manager.unload_idle() == ["t.safetensors"]  # the default pool keeps its models
    assert loaded_names(manager) == {"a.safetensors"}
