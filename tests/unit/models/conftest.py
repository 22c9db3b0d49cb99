"""Shared by the manager tests: a real safetensors loader, worker threads, a models folder."""

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

from genserve.models.loaders.base import LoadedModel, Loader, module_bytes
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelEntry, ModelKind, ModelRegistry

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
