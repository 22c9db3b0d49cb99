"""ModelManager against real safetensors files and a real (tiny) loader; threads prove the locking."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel, Loader, module_bytes
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelEntry, ModelKind, ModelRegistry

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20
VAE = ModelKind.VAE


class TensorModule(nn.Module):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for key, tensor in sorted(tensors.items()):
            self.register_buffer(key.replace(".", "_"), tensor)


class SafetensorsLoader:
    """Reads a model's safetensors file(s) into buffers on the asked device and dtype."""

    def __init__(self, delay: float = 0.0, barrier: threading.Barrier | None = None) -> None:
        self.delay = delay
        self.barrier = barrier
        self.calls: list[str] = []
        self.released: list[str] = []
        self.seen: list[tuple[torch.device, torch.dtype]] = []
        self._lock = threading.Lock()

    def __call__(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
        with self._lock:
            self.calls.append(entry.name)
            self.seen.append((device, dtype))
        if self.delay:
            time.sleep(self.delay)
        if self.barrier is not None:
            self.barrier.wait()
        files = [entry.path] if entry.path.is_file() else sorted(entry.path.glob("*.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        for file in files:
            tensors.update(load_file(file, device=str(device)))
        module = TensorModule({k: v.to(dtype) for k, v in tensors.items()}).eval()

        def release() -> None:
            with self._lock:
                self.released.append(entry.name)

        return LoadedModel(module, memory_bytes=module_bytes(module), device=device, release=release)


class Worker(threading.Thread):
    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 5.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "thread is still blocked"
        if self.error is not None:
            raise self.error
        return self.result


def started(fn: Callable[[], Any]) -> Worker:
    worker = Worker(fn)
    worker.start()
    return worker


def write_weights(path: Path, value: float, mib: float = 1.0, dtype: torch.dtype = torch.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = int(mib * MIB) // torch.tensor([], dtype=dtype).element_size()
    save_file({"weight": torch.full((count,), value, dtype=dtype)}, str(path))


@pytest.fixture
def models(tmp_path: Path) -> Path:
    for value, name in enumerate("abcd", start=1):
        write_weights(tmp_path / "vae" / f"{name}.safetensors", float(value))
    write_weights(tmp_path / "vae" / "big.safetensors", 9.0, mib=3)
    write_weights(tmp_path / "vae" / "half.safetensors", 5.0, dtype=torch.float16)  # 2 MiB once float32
    folder = tmp_path / "vae" / "folder_model"
    write_weights(folder / "diffusion_pytorch_model.safetensors", 7.0)
    (folder / "config.json").write_text("{}")
    write_weights(tmp_path / "text_encoders" / "t.safetensors", 3.0)
    (tmp_path / "llm" / "chat").mkdir(parents=True)
    return tmp_path


def manager_for(models: Path, loader: Loader, **options: Any) -> ModelManager:
    loaders = {VAE: loader, ModelKind.TEXT_ENCODER: loader}
    return ModelManager(ModelRegistry(models), loaders, default_device="cpu", **options)


def loaded_names(manager: ModelManager) -> set[str]:
    return {s.name for s in manager.loaded()}


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
    assert error.details["needed_bytes"] == (models / "vae" / "d.safetensors").stat().st_size
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
