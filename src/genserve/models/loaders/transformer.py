"""Diffusion transformer loader, and the gate that applies LoRAs to a shared transformer.

Adapters mutate the transformer in place, so two concurrent runs with different LoRAs or
strengths must never overlap. ``AdapterGate`` lets any number of runs that want the same
(LoRA, strength) share the model at once; a run that wants another setting waits until the
current users finish, then switches. A run without a LoRA disables adapters, giving the base
model's output exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel, module_bytes
from genserve.models.loaders.lora import LoraWeights
from genserve.models.registry import ModelEntry


class AdapterGate:
    def __init__(self, transformer: torch.nn.Module) -> None:
        self._transformer = transformer
        self._cond = threading.Condition()
        self._active: tuple[str, float] | None = None
        self._users = 0
        self._adapters: set[str] = set()

    @contextmanager
    def applied(self, lora: LoraWeights | None, strength: float) -> Iterator[None]:
        want = None if lora is None else (lora.adapter_name, float(strength))
        with self._cond:
            while self._users > 0 and self._active != want:
                self._cond.wait()
            if self._active != want:
                self._switch(lora, strength)
            self._active = want
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def _switch(self, lora: LoraWeights | None, strength: float) -> None:
        model = self._transformer
        if lora is None:
            if self._adapters:
                model.disable_adapters()
            return
        if lora.adapter_name not in self._adapters:
            try:
                model.load_lora_adapter(
                    dict(lora.state_dict),
                    adapter_name=lora.adapter_name,
                    metadata=lora.metadata,
                    prefix="transformer",
                )
            except Exception as exc:
                raise GenserveError(
                    ErrorCode.INVALID_INPUT,
                    f"lora_model_name: {lora.name} does not fit this diffusion model: {exc}",
                    field="lora_model_name",
                ) from exc
            self._adapters.add(lora.adapter_name)
        model.enable_adapters()
        model.set_adapters([lora.adapter_name], weights=[float(strength)])


@dataclass
class DiffusionModel:
    """What ``manager.use('diffusion_models', ...)`` yields: the transformer and its adapter gate."""

    transformer: torch.nn.Module
    gate: AdapterGate = field(init=False)

    def __post_init__(self) -> None:
        self.gate = AdapterGate(self.transformer)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device


def load_transformer(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from diffusers import QwenImageTransformer2DModel

    if not (entry.path / "config.json").is_file():
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"diffusion model {entry.name} is not a diffusers folder (config.json + safetensors); "
            "single-file transformers need a config folder and are not supported yet",
            field="unet_model_name",
        )
    transformer = QwenImageTransformer2DModel.from_pretrained(entry.path, torch_dtype=dtype).to(device).eval()
    transformer.requires_grad_(False)
    return LoadedModel(
        model=DiffusionModel(transformer), memory_bytes=module_bytes(transformer), device=device
    )
