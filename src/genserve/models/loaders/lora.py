"""LoRA loader: a safetensors file in diffusers, peft, ComfyUI or kohya key layout.

Loading a LoRA only reads and converts its tensors; it is applied to a transformer per run by
``AdapterGate`` (see transformer.py), so one loaded transformer serves any LoRA and strength.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel
from genserve.models.registry import ModelEntry


@dataclass(frozen=True)
class LoraWeights:
    name: str
    adapter_name: str  # a peft-safe identifier derived from the file name and contents
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] | None


def load_lora(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from diffusers.loaders.lora_pipeline import QwenImageLoraLoaderMixin

    if not entry.path.is_file() or entry.path.suffix != ".safetensors":
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"lora_model_name: {entry.name} is not a .safetensors file",
            field="lora_model_name",
        )
    try:
        state_dict, metadata = QwenImageLoraLoaderMixin.lora_state_dict(
            str(entry.path), return_lora_metadata=True
        )
    except Exception as exc:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"lora_model_name: {entry.name} is not a readable LoRA: {exc}"
        ) from exc
    if not state_dict or not all("lora" in key for key in state_dict):
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"lora_model_name: {entry.name} holds no LoRA weights",
            field="lora_model_name",
        )
    digest = hashlib.sha1(f"{entry.name}:{entry.path.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    tensors = {key: value.to(dtype=dtype) for key, value in state_dict.items()}
    weights = LoraWeights(entry.name, f"lora_{digest}", tensors, metadata)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    return LoadedModel(model=weights, memory_bytes=size, device=torch.device("cpu"))
