"""VAE loader: a diffusers ``AutoencoderKLQwenImage`` folder (config.json + safetensors).

The split pipeline encodes the image to edit twice: once as the sampler's latent (latent
encoder) and once as a reference latent (text encoder), at the same size with the default
settings. ``Vae`` keeps a small cache of recent encodings, keyed by the exact pixels, so the
second is free. It lives and dies with the loaded model, so it can never outlive its weights.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel, module_bytes
from genserve.models.registry import ModelEntry

ENCODE_CACHE_ENTRIES = 16


class LatentCache:
    """A small thread-safe LRU of CPU tensors; callers get copies, never the stored tensor."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found.clone()

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        with self._lock:
            self._items[key] = value.detach().cpu().clone()
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Vae:
    """What ``manager.use('vae', ...)`` yields: the module and its encode cache."""

    module: Any  # AutoencoderKLQwenImage
    encodings: LatentCache = field(default_factory=lambda: LatentCache(ENCODE_CACHE_ENTRIES))

    @property
    def config(self) -> Any:
        return self.module.config


def load_vae(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from diffusers import AutoencoderKLQwenImage

    if not (entry.path / "config.json").is_file():
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"VAE model {entry.name} is not a diffusers folder (config.json + safetensors); "
            "single-file VAEs need a known config and key mapping and are not supported yet",
            field="vae_model_name",
        )
    module = AutoencoderKLQwenImage.from_pretrained(entry.path, torch_dtype=dtype).to(device).eval()
    module.requires_grad_(False)
    return LoadedModel(model=Vae(module), memory_bytes=module_bytes(module), device=device)
