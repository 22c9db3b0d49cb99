"""Health, model stats, load and unload of the lip-sync server, over real parts and demo models."""

from __future__ import annotations

import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from genserve.app.runtime import build_models
from genserve.config import LipsyncModelSettings, LipsyncSettings, ModelsSettings, Settings
from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.lipsync import build_lipsync_demo
from genserve.models.lipsync_registry import LipsyncRegistry
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind
from genserve.services.lipsync.admin import MIB, LipsyncAdmin, gpu_ids

pytestmark = pytest.mark.timeout(60)

LIPSYNC = ModelKind.LIPSYNC
cpu_only = pytest.mark.skipif(bool(gpu_ids()), reason="checks the CPU-only answers")


class Parts:
    """The one model manager (its lip-sync pool from the settings) and the admin over it."""

    def __init__(self, models: ModelManager) -> None:
        self.models = models
        self.admin = LipsyncAdmin(models)
        self.catalog: LipsyncRegistry = models.registry.lipsync


MakeParts = Callable[..., Parts]


@pytest.fixture
def make_parts(tmp_path: Path) -> Iterator[MakeParts]:
    built: list[Parts] = []

    def make(ids: tuple[str, ...] = ("a", "b"), **settings: Any) -> Parts:
        models = tmp_path / "models"
        for seed, model_id in enumerate(ids):
            build_lipsync_demo(models / "lipsync" / model_id, seed=seed, frames=2, width=240, height=240)
        config = Settings(
            models=ModelsSettings(dir=models, default_device="cpu"), lipsync=LipsyncSettings(**settings)
        )
        parts = Parts(build_models(config))
        built.append(parts)
        return parts

    yield make
    for parts in built:
        parts.models.close()


def fails(code: ErrorCode, call: Callable[[], Any]) -> GenserveError:
    with pytest.raises(GenserveError) as info:
        call()
    assert info.value.code is code, info.value
    return info.value


@cpu_only
def test_healthy_with_models_present(make_parts: MakeParts) -> None:
    parts = make_parts(max_models=7)
    status = parts.admin.health(accepting=True)
    assert status.healthy and status.problems == []
    assert (status.loaded_models, status.max_models) == (0, 7)
    assert (status.gpu_ids, status.gpu_memory_used_gb) == ([], [])
    parts.models.load(LIPSYNC, "a")
    assert parts.admin.health(accepting=True).loaded_models == 1


def test_unhealthy_with_an_empty_catalog(make_parts: MakeParts) -> None:
    parts = make_parts(ids=())
    status = parts.admin.health(accepting=True)
    assert not status.healthy
    assert status.problems == [f"no lip-sync models configured or found in {parts.catalog.root}"]


def test_unhealthy_when_not_accepting(make_parts: MakeParts) -> None:
    parts = make_parts()
    status = parts.admin.health(accepting=False)
    assert not status.healthy and status.problems == ["the server is shutting down"]


def test_model_stats_lists_every_id_with_real_counts(make_parts: MakeParts) -> None:
    parts = make_parts(models={"configured_only": LipsyncModelSettings()})
    before = time.time()
    for ms in (10.0, 30.0):
        with parts.models.use(LIPSYNC, "a", count=False):
            pass
        parts.models.record(LIPSYNC, "a", ms)  # as the service does: inference time only
    rows = {row.model_id: row for row in parts.admin.model_stats()}
    assert sorted(rows) == ["a", "b", "configured_only"]

    a = rows["a"]
    [loaded] = parts.models.loaded()
    assert (a.loaded, a.gpu_id, a.load_count, a.evictions) == (True, -1, 1, 0)
    assert a.memory_mb == math.ceil(loaded.memory_bytes / MIB) > 0
    assert (a.request_count, a.total_inference_ms, a.avg_inference_ms) == (2, 40, 20.0)
    assert int(before) <= a.last_used_timestamp <= time.time()

    for idle in (rows["b"], rows["configured_only"]):
        assert (idle.loaded, idle.gpu_id, idle.memory_mb, idle.request_count) == (False, -1, 0, 0)
        assert (idle.avg_inference_ms, idle.last_used_timestamp, idle.load_count) == (0.0, 0, 0)


def test_model_stats_keeps_a_loaded_model_whose_folder_was_deleted(make_parts: MakeParts) -> None:
    parts = make_parts()
    parts.models.load(LIPSYNC, "b")
    shutil.rmtree(parts.catalog.root / "b")
    rows = {row.model_id: row.loaded for row in parts.admin.model_stats()}
    assert rows == {"a": False, "b": True}
    parts.admin.unload_model("b", timeout=5)  # still unloadable
    assert [row.model_id for row in parts.admin.model_stats()] == ["a", "b"]


@cpu_only
def test_load_model_on_a_gpu_that_is_not_there_is_refused(make_parts: MakeParts) -> None:
    parts = make_parts()
    error = fails(ErrorCode.INVALID_INPUT, lambda: parts.admin.load_model("a", 5))
    assert "Invalid GPU id 5" in error.message and "-1" in error.message
    assert error.details == {"field": "preferred_gpu"}
    assert not parts.models.is_loaded(LIPSYNC, "a")


def test_load_model_twice_reports_load_time_once(make_parts: MakeParts) -> None:
    parts = make_parts()
    gpu, first_ms = parts.admin.load_model("a", -1)
    assert gpu == -1 and first_ms > 0
    assert parts.admin.load_model("a", -1) == (-1, 0.0)
    assert [s.load_count for s in parts.models.loaded()] == [1]


def test_load_model_refuses_missing_and_unknown_ids(make_parts: MakeParts) -> None:
    parts = make_parts()
    error = fails(ErrorCode.INVALID_INPUT, lambda: parts.admin.load_model("", -1))
    assert error.message == "model_id is required"
    error = fails(ErrorCode.MODEL_NOT_FOUND, lambda: parts.admin.load_model("zed", -1))
    assert error.message == "Model 'zed' not found"


def test_unload_model(make_parts: MakeParts) -> None:
    parts = make_parts()
    error = fails(ErrorCode.NOT_FOUND, lambda: parts.admin.unload_model("a", None))
    assert error.message == "Model 'a' is not loaded"
    error = fails(ErrorCode.MODEL_NOT_FOUND, lambda: parts.admin.unload_model("zed", None))
    assert error.message == "Model 'zed' not found"
    error = fails(ErrorCode.INVALID_INPUT, lambda: parts.admin.unload_model("", None))
    assert error.message == "model_id is required"

    parts.admin.load_model("a", -1)
    parts.admin.unload_model("a", timeout=5)
    assert not parts.models.is_loaded(LIPSYNC, "a")
    [row] = [r for r in parts.admin.model_stats() if r.model_id == "a"]
    assert (row.loaded, row.load_count, row.evictions) == (False, 1, 0)


def test_a_model_that_cannot_load_is_unavailable_and_unhealthy(make_parts: MakeParts) -> None:
    parts = make_parts(models={"ghost": LipsyncModelSettings()})
    rows = {row.model_id: row.available for row in parts.admin.model_stats()}
    assert rows == {"a": True, "b": True, "ghost": False}
    status = parts.admin.health(accepting=True)
    assert not status.healthy
    [problem] = status.problems
    assert problem.startswith("lip-sync model 'ghost' is unavailable: model file ")
    assert problem.endswith("is missing from the models folder (lipsync.models.ghost.model_path)")
    error = fails(ErrorCode.MODEL_NOT_FOUND, lambda: parts.admin.load_model("ghost", -1))
    assert error.message.startswith("Model 'ghost' not found: model file ")


def test_a_loaded_model_whose_files_went_stays_available(make_parts: MakeParts) -> None:
    parts = make_parts()
    parts.models.load(LIPSYNC, "b")
    (parts.catalog.root / "b" / "audio_encoder.onnx").unlink()
    rows = {row.model_id: row.available for row in parts.admin.model_stats()}
    assert rows == {"a": True, "b": True}  # still serving from memory
    assert parts.admin.health(accepting=True).problems == []
    assert parts.admin.load_model("b", -1)[1] == 0.0
    parts.admin.unload_model("b", timeout=5)
    rows = {row.model_id: row.available for row in parts.admin.model_stats()}
    assert rows == {"a": True, "b": False}


@cpu_only
def test_load_model_with_preferred_gpu_0_on_a_cpu_host_is_automatic(make_parts: MakeParts) -> None:
    parts = make_parts()
    gpu, load_ms = parts.admin.load_model("a", 0)  # 0: what an unset field sends
    assert gpu == -1 and load_ms > 0


def test_load_model_waits_for_a_slot_in_use(make_parts: MakeParts) -> None:
    parts = make_parts(max_models=1, capacity_wait_s=30)
    holding = threading.Event()

    def hold_a() -> None:
        with parts.models.use(LIPSYNC, "a"):
            holding.set()
            time.sleep(0.3)

    holder = threading.Thread(target=hold_a, daemon=True)
    holder.start()
    assert holding.wait(10)
    started = time.monotonic()
    gpu, load_ms = parts.admin.load_model("b", -1)
    holder.join(10)
    assert gpu == -1 and load_ms > 0 and time.monotonic() - started >= 0.2
    assert {s.name for s in parts.models.loaded()} == {"b"}


def test_load_model_refuses_naming_max_models_when_the_slot_stays_busy(make_parts: MakeParts) -> None:
    parts = make_parts(max_models=1, capacity_wait_s=0.2)
    with parts.models.use(LIPSYNC, "a"):
        error = fails(
            ErrorCode.RESOURCE_EXHAUSTED,
            lambda: parts.admin.load_model("b", -1),
        )
    assert error.message.startswith("Model 'b' cannot be loaded: all lipsync.max_models=1 loaded models")
    assert error.details["setting"] == "lipsync.max_models"
