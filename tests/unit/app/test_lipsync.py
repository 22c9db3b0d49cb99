"""The lip-sync server's parts from its settings (its pool in the one manager, its lane, the service),
its preload, and idle unloading."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from genserve.app.lipsync import GIB, build_lipsync
from genserve.app.runtime import build_models
from genserve.config import LipsyncModelSettings, LipsyncSettings, ModelsSettings, Settings
from genserve.models.demo.lipsync import build_lipsync_demo
from genserve.models.registry import ModelKind
from genserve.services.lipsync.admin import LipsyncAdmin
from genserve.services.lipsync.devices import gpu_ids

pytestmark = pytest.mark.timeout(60)

LIPSYNC = ModelKind.LIPSYNC


class Parts:
    """What the composition root builds for lip-sync: the manager with its pool, the service and
    lane, and the admin object."""

    def __init__(self, models: Path, settings: LipsyncSettings) -> None:
        config = Settings(models=ModelsSettings(dir=models, default_device="cpu"), lipsync=settings)
        self.models = build_models(config)
        self.catalog = self.models.registry.lipsync
        built = build_lipsync(settings, self.catalog)
        self.service, self.lane, self.compositor = built.service, built.lane, built.compositor
        self.admin = LipsyncAdmin(self.models)

    @property
    def pool(self):  # type: ignore[no-untyped-def]
        return self.models.pool(LIPSYNC)

    def close(self) -> None:
        self.models.close()
        self.compositor.close()


MakeParts = Callable[..., Parts]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for seed, model_id in enumerate(("a", "b", "c")):
        build_lipsync_demo(root / "lipsync" / model_id, seed=seed, frames=2, width=240, height=240)
    return root


@pytest.fixture
def make_parts(models: Path) -> Iterator[MakeParts]:
    built: list[Parts] = []

    def make(**settings: Any) -> Parts:
        parts = Parts(models, LipsyncSettings(**settings))
        built.append(parts)
        return parts

    yield make
    for parts in built:
        parts.close()


def loaded(parts: Parts) -> set[str]:
    return {s.name for s in parts.models.loaded()}


def test_parts_follow_the_settings(make_parts: MakeParts) -> None:
    parts = make_parts(
        max_models=3, max_memory_gb=0.5, batching=False, max_batch_frames=16, max_batch_delay_ms=4
    )
    assert parts.pool.max_loaded == 3
    assert parts.models.budgets(parts.pool) == {"cpu": int(0.5 * GIB)}
    batcher = parts.lane.batcher
    assert batcher is not None
    assert (batcher.max_items, batcher.max_delay_s, batcher.enabled) == (16, 0.004, False)
    assert (parts.service.name, parts.service.lane) == ("lipsync", "lipsync")
    assert parts.catalog.ids() == ["a", "b", "c"]
    other = make_parts()
    assert other.models.budgets(other.pool) == {}  # no max_memory_gb: count only


def test_lfu_policy_reaches_the_manager(make_parts: MakeParts) -> None:
    parts = make_parts(max_models=2, eviction_policy="lfu")
    for _ in range(3):
        with parts.models.use(LIPSYNC, "a"):
            pass
    with parts.models.use(LIPSYNC, "b"):
        pass  # most recent, least used
    parts.models.load(LIPSYNC, "c")
    assert loaded(parts) == {"a", "c"}


def test_preload_loads_only_models_marked_preload(
    make_parts: MakeParts, caplog: pytest.LogCaptureFixture
) -> None:
    parts = make_parts(
        models={
            "a": LipsyncModelSettings(preload=True),
            "b": LipsyncModelSettings(preload=False),
            "broken": LipsyncModelSettings(preload=True),  # no files at all: logged, not fatal
        }
    )
    with caplog.at_level(logging.ERROR, logger="genserve.lipsync"):
        parts.admin.preload()
    assert loaded(parts) == {"a"}
    assert "preloading lip-sync model broken failed" in caplog.text


def test_unload_idle_spares_a_model_in_use(make_parts: MakeParts) -> None:
    parts = make_parts()
    parts.models.load(LIPSYNC, "a")
    inside, leave = threading.Event(), threading.Event()

    def hold_b() -> None:
        with parts.models.use(LIPSYNC, "b"):
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold_b, daemon=True)
    holder.start()
    try:
        assert inside.wait(10)
        assert parts.models.unload_idle(0) == ["a"]
        assert loaded(parts) == {"b"}
    finally:
        leave.set()
        holder.join(10)
    assert parts.models.unload_idle(3600) == []  # b was just used: not idle for an hour
    assert parts.models.unload_idle(0) == ["b"]
    assert loaded(parts) == set()


def test_idle_reaper_unloads_after_the_timeout(make_parts: MakeParts) -> None:
    parts = make_parts(idle_timeout_minutes=0.3 / 60)  # 0.3 s, checked every 75 ms
    with parts.models.use(LIPSYNC, "a"):
        pass
    parts.models.start_idle_reaper()
    deadline = time.monotonic() + 5
    while loaded(parts) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loaded(parts) == set()


def test_no_reaper_without_an_idle_timeout(make_parts: MakeParts) -> None:
    parts = make_parts()
    parts.models.start_idle_reaper()
    assert parts.models._reaper._thread is None


def test_a_model_loaded_ahead_of_requests_is_not_idle_from_the_start(make_parts: MakeParts) -> None:
    parts = make_parts(models={"a": LipsyncModelSettings(preload=True)})
    parts.admin.preload()  # loaded, never used: no last_used at all
    assert parts.models.unload_idle(60) == []
    with parts.models.use(LIPSYNC, "b"):
        pass
    time.sleep(0.3)
    parts.models.unload(LIPSYNC, "b")
    parts.models.load(LIPSYNC, "b")  # reloaded: its last use is from before this load
    assert parts.models.unload_idle(0.2) == ["a"]  # a: idle since it was seen loaded, 0.3 s ago
    assert loaded(parts) == {"b"}  # b: last used 0.3 s ago, but loaded again just now
    assert parts.models.unload_idle(0) == ["b"]


@pytest.mark.skipif(bool(gpu_ids()), reason="a host without GPUs")
def test_preload_falls_back_from_a_configured_gpu_that_is_not_here(make_parts: MakeParts) -> None:
    parts = make_parts(models={"a": LipsyncModelSettings(preload=True, preferred_gpu=0)})
    parts.admin.preload()
    [stats] = parts.models.loaded()
    assert (stats.name, stats.device) == ("a", "cpu")


def test_settings_reach_the_pool_and_the_service(
    make_parts: MakeParts, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="genserve.lipsync"):
        parts = make_parts(capacity_wait_s=7, max_audio_s=3, models={"ghost": LipsyncModelSettings()})
    assert parts.pool.capacity_wait_s == 7
    assert parts.service.run.keywords["max_audio_s"] == 3  # type: ignore[attr-defined]
    assert "lip-sync model ghost is unavailable: model file" in caplog.text


def test_an_idle_unload_wakes_waiting_requests(make_parts: MakeParts) -> None:
    parts = make_parts()
    parts.models.load(LIPSYNC, "a")
    releases = parts.models._room.releases  # what a load waiting for room waits on
    assert parts.models.unload_idle(0) == ["a"]
    assert parts.models._room.releases > releases
