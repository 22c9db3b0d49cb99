"""ModelManager: loading, concurrency, unload and lifecycle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel, Loader
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelEntry, ModelKind, ModelRegistry
from tests.unit.models.conftest import MIB, VAE, SafetensorsLoader, TensorModule, manager_for, started

pytestmark = pytest.mark.timeout(60)


def test_use_loads_on_demand_and_reuses_the_loaded_model(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader)
    assert not manager.is_loaded("vae", "a.safetensors")
    assert manager.stats() == []
    with manager.use("vae", "a.safetensors") as model:
        assert isinstance(model, TensorModule)
        assert torch.equal(model.weight, torch.full((MIB // 4,), 1.0))
    assert manager.is_loaded(VAE, "a.safetensors")
    with manager.use(VAE, "a.safetensors") as again:
        assert again is model
    assert loader.calls == ["a.safetensors"]
    assert loader.seen == [(torch.device("cpu"), torch.float32)]

    bf16 = manager_for(models, SafetensorsLoader(), dtype="bfloat16")
    with bf16.use(VAE, "b.safetensors") as model:
        assert model.weight.dtype is torch.bfloat16


def test_eight_threads_asking_for_one_model_load_it_once(models: Path) -> None:
    loader = SafetensorsLoader(delay=0.3)
    manager = manager_for(models, loader)
    start = threading.Barrier(8, timeout=5)

    def request() -> int:
        start.wait()
        with manager.use(VAE, "a.safetensors") as model:
            return id(model)

    workers = [started(request) for _ in range(8)]
    ids = {w.finish() for w in workers}
    assert loader.calls == ["a.safetensors"]
    assert len(ids) == 1
    assert manager.stats()[0].request_count == 8


def test_different_models_load_at_the_same_time(models: Path) -> None:
    # Each load waits inside the loader for the other one: serialised loading would break the barrier.
    loader = SafetensorsLoader(barrier=threading.Barrier(2, timeout=5))
    manager = manager_for(models, loader)
    workers = [started(lambda n=n: manager.load(VAE, n)) for n in ("a.safetensors", "b.safetensors")]
    for worker in workers:
        assert worker.finish().loaded
    assert sorted(loader.calls) == ["a.safetensors", "b.safetensors"]


def test_use_of_different_models_runs_in_parallel(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader())
    inside = threading.Barrier(2, timeout=5)

    def request(name: str) -> str:
        with manager.use(VAE, name):
            inside.wait()  # both blocks are open at once, so no lock is held across them
        return name

    workers = [started(lambda n=n: request(n)) for n in ("a.safetensors", "b.safetensors")]
    assert [w.finish() for w in workers] == ["a.safetensors", "b.safetensors"]


def test_unload_waits_until_the_block_exits(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader)
    entered, leave = threading.Event(), threading.Event()
    order: list[str] = []

    def request() -> None:
        with manager.use(VAE, "a.safetensors"):
            entered.set()
            leave.wait(5)
            order.append("block exited")

    def unload() -> bool:
        done = manager.unload(VAE, "a.safetensors")
        order.append("unloaded")
        return done

    user = started(request)
    assert entered.wait(5)
    unloader = started(unload)
    time.sleep(0.2)
    assert unloader.is_alive() and manager.is_loaded(VAE, "a.safetensors")
    assert loader.released == []
    leave.set()
    user.finish()
    assert unloader.finish() is True
    assert order == ["block exited", "unloaded"]
    assert not manager.is_loaded(VAE, "a.safetensors")
    assert loader.released == ["a.safetensors"]


def test_use_during_a_pending_unload_waits_and_gets_a_fresh_copy(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader)
    entered, leave, second_entered = threading.Event(), threading.Event(), threading.Event()
    seen: list[Any] = []

    def first() -> None:
        with manager.use(VAE, "a.safetensors") as model:
            seen.append(model)
            entered.set()
            leave.wait(5)

    def second() -> None:
        with manager.use(VAE, "a.safetensors") as model:
            seen.append(model)
            second_entered.set()

    user = started(first)
    assert entered.wait(5)
    unloader = started(lambda: manager.unload(VAE, "a.safetensors"))
    time.sleep(0.2)
    late = started(second)
    time.sleep(0.2)
    assert not second_entered.is_set()
    leave.set()
    user.finish()
    assert unloader.finish() is True
    late.finish()
    assert seen[0] is not seen[1]
    assert loader.calls == ["a.safetensors", "a.safetensors"]
    assert loader.released == ["a.safetensors"]


def test_nested_use_in_the_same_thread_is_not_blocked_by_a_pending_unload(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader())
    entered, go_on = threading.Event(), threading.Event()

    def request() -> bool:
        with manager.use(VAE, "a.safetensors") as outer:
            entered.set()
            go_on.wait(5)
            with manager.use(VAE, "a.safetensors") as inner:
                return inner is outer

    user = started(request)
    assert entered.wait(5)
    unloader = started(lambda: manager.unload(VAE, "a.safetensors"))
    time.sleep(0.2)
    go_on.set()
    assert user.finish() is True
    assert unloader.finish() is True


def test_unload_timeout_keeps_the_model_usable(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader())
    entered, leave = threading.Event(), threading.Event()

    def request() -> None:
        with manager.use(VAE, "a.safetensors"):
            entered.set()
            leave.wait(5)

    user = started(request)
    assert entered.wait(5)
    with pytest.raises(GenserveError) as info:
        manager.unload(VAE, "a.safetensors", timeout=0.1)
    assert info.value.code is ErrorCode.TIMEOUT
    assert manager.is_loaded(VAE, "a.safetensors")
    assert started(lambda: manager.load(VAE, "a.safetensors")).finish(timeout=2).loaded
    leave.set()
    user.finish()
    with manager.use(VAE, "a.safetensors"), pytest.raises(GenserveError) as info:
        manager.unload(VAE, "a.safetensors")
    assert info.value.code is ErrorCode.INVALID_INPUT


def test_a_failing_loader_leaves_nothing_loaded(models: Path) -> None:
    good = SafetensorsLoader()
    attempts: list[str] = []

    def flaky(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
        attempts.append(entry.name)
        if len(attempts) == 1:
            raise RuntimeError("corrupt header")
        return good(entry, device, dtype)

    loaders: dict[ModelKind, Loader] = {VAE: flaky, ModelKind.TEXT_ENCODER: good}
    manager = ModelManager(ModelRegistry(models), loaders, max_loaded=1, default_device="cpu")
    with pytest.raises(GenserveError) as info, manager.use(VAE, "a.safetensors"):
        pytest.fail("the block must not run")
    assert info.value.code is ErrorCode.INTERNAL
    assert "failed to load vae/a.safetensors" in info.value.message
    assert "corrupt header" in info.value.message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not manager.is_loaded(VAE, "a.safetensors")
    assert manager.stats() == [] and manager.loaded() == []
    # The failed model's reserved slot is free again (max_loaded=1), and it can be retried.
    manager.load(ModelKind.TEXT_ENCODER, "t.safetensors")
    with manager.use(VAE, "a.safetensors") as model:
        assert torch.equal(model.weight[:2], torch.tensor([1.0, 1.0]))
    assert attempts == ["a.safetensors", "a.safetensors"]


def test_a_genserve_error_from_a_loader_passes_through(models: Path) -> None:
    refusal = GenserveError(ErrorCode.INVALID_INPUT, "vae_model_name: a.safetensors is not a VAE")

    def refusing(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
        raise refusal

    manager = ModelManager(ModelRegistry(models), {VAE: refusing}, default_device="cpu")
    with pytest.raises(GenserveError) as info:
        manager.load(VAE, "a.safetensors")
    assert info.value is refusal
    assert manager.stats() == []


def test_a_weights_name_reaches_the_folder_of_the_same_stem(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader)
    with manager.use(VAE, "folder_model.safetensors") as by_file_name:
        assert torch.equal(by_file_name.weight[:1], torch.tensor([7.0]))
    with manager.use(VAE, "folder_model") as by_folder_name:
        assert by_folder_name is by_file_name
    assert loader.calls == ["folder_model"]
    assert [(s.name, s.request_count) for s in manager.stats()] == [("folder_model", 2)]
    assert manager.is_loaded(VAE, "folder_model.safetensors")
    assert manager.unload(VAE, "folder_model.safetensors") is True


def test_bad_names_kinds_and_devices_are_refused(models: Path) -> None:
    manager = manager_for(models, SafetensorsLoader())
    cases: list[tuple[Callable[[], Any], ErrorCode, str]] = [
        (lambda: manager.load(VAE, "missing.safetensors"), ErrorCode.MODEL_NOT_FOUND, "a.safetensors"),
        (lambda: manager.load("llm", "chat"), ErrorCode.INVALID_INPUT, "no loader"),
        (lambda: manager.load("vaes", "a.safetensors"), ErrorCode.INVALID_INPUT, "'vaes'"),
        (lambda: manager.load(VAE, "../vae/a.safetensors"), ErrorCode.INVALID_INPUT, "not a model name"),
    ]
    if not torch.cuda.is_available():
        cases.append(
            (lambda: manager.load(VAE, "a.safetensors", device="cuda:7"), ErrorCode.INVALID_INPUT, "cpu")
        )
    for call, code, text in cases:
        with pytest.raises(GenserveError) as info:
            call()
        assert info.value.code is code
        assert text in info.value.message
    assert manager.stats() == []


def test_an_explicit_other_device_is_refused_but_no_device_reuses(models: Path) -> None:
    real = SafetensorsLoader()

    def elsewhere(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
        loaded = real(entry, device, dtype)  # like an ONNX model that runs on its own device
        loaded.device = torch.device("meta")
        return loaded

    manager = ModelManager(ModelRegistry(models), {VAE: elsewhere}, default_device="cpu")
    assert manager.load(VAE, "a.safetensors").device == "meta"
    with manager.use(VAE, "a.safetensors"), manager.use(VAE, "a.safetensors", device="auto"):
        pass
    with pytest.raises(GenserveError) as info, manager.use(VAE, "a.safetensors", device="cpu"):
        pass
    assert info.value.code is ErrorCode.INVALID_INPUT
    assert "unload it first" in info.value.message
    assert real.calls == ["a.safetensors"]


def test_close_unloads_and_releases_everything(models: Path) -> None:
    loader = SafetensorsLoader()
    manager = manager_for(models, loader)
    manager.load(VAE, "a.safetensors")
    manager.load(ModelKind.TEXT_ENCODER, "t.safetensors")
    manager.close()
    assert manager.loaded() == []
    assert sorted(loader.released) == ["a.safetensors", "t.safetensors"]
    assert {s.name for s in manager.stats()} == {"a.safetensors", "t.safetensors"}
