"""VAE loader: a diffusers ``AutoencoderKLQwenImage`` folder (config.json + safetensors)."""

from __future__ import annotations

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel, module_bytes
from genserve.models.registry import ModelEntry


def load_vae(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from diffusers import AutoencoderKLQwenImage

    if not (entry.path / "config.json").is_file():
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"VAE model {entry.name} is not a diffusers folder (config.json + safetensors); "
            "single-file VAEs need a known config and key mapping and are not supported yet",
            field="vae_model_name",
        )
    vae = AutoencoderKLQwenImage.from_pretrained(entry.path, torch_dtype=dtype).to(device).eval()
    vae.requires_grad_(False)
    return LoadedModel(model=vae, memory_bytes=module_bytes(vae), device=device)
