"""VAE loader: a diffusers ``AutoencoderKLQwenImage`` folder (config.json + safetensors, also a
snapshot's ``vae/``), ComfyUI's single file in the Wan-2.1 layout, or Qwen-Image 2.1's VAE file
(genserve's own module, ``models.arch.qwen21_vae``: 64 latent channels at 1/16, RGBA).

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
from genserve.models.formats import qwen21_vae, wan_vae
from genserve.models.formats.layouts import diffusers_folder
from genserve.models.formats.safetensors_header import Header, is_safetensors, read_header
from genserve.models.loaders.base import LoadedModel, module_bytes
from genserve.models.loaders.single_file import load_single_file
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

    module: Any  # AutoencoderKLQwenImage, or Qwen21Vae (same interface)
    encodings: LatentCache = field(default_factory=lambda: LatentCache(ENCODE_CACHE_ENTRIES))

    @property
    def config(self) -> Any:
        return self.module.config


def load_vae(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    field_name = "vae_model_name"
    folder = diffusers_folder(entry.path, "vae")
    if folder is not None:
        from diffusers import AutoencoderKLQwenImage

        module = AutoencoderKLQwenImage.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
        module.requires_grad_(False)
    elif entry.path.is_file() and is_safetensors(entry.path):
        header = read_header(entry.path, field_name)
        # First: the 2.1 file also has the keys the Wan-2.1 test looks for.
        if qwen21_vae.is_qwen21_vae(header):
            return _loaded(_load_qwen21(header, device, dtype, field_name), device)
        if header.has(qwen21_vae.NESTED_MARKER):
            raise GenserveError(
                ErrorCode.MODEL_NOT_FOUND,
                f"{field_name}: {entry.name} is a VAE in the Wan-2.2 layout that is not Qwen-Image 2.1's "
                "(its images are patchified: the Wan 2.2 video VAE?); genserve serves the Qwen-Image "
                "VAEs (Wan-2.1 layout) and Qwen-Image 2.1's",
                field=field_name,
            )
        if not wan_vae.is_wan_vae(header):
            raise GenserveError(
                ErrorCode.MODEL_NOT_FOUND,
                f"{field_name}: {entry.name} is not a Qwen-Image VAE: neither the Wan-2.1 layout "
                f"(no {wan_vae.MARKER}) nor Qwen-Image 2.1's (no {qwen21_vae.NESTED_MARKER})",
                field=field_name,
            )
        from diffusers import AutoencoderKLQwenImage

        config = wan_vae.derive_config(header, field_name)
        module = load_single_file(
            lambda: AutoencoderKLQwenImage(**config),
            header,
            device,
            dtype,
            lambda key: key,
            field_name,
            convert=wan_vae.to_diffusers,
        )
    else:
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {entry.name} is neither a diffusers folder (config.json and weights) nor a "
            "safetensors single file of the Qwen-Image or Qwen-Image 2.1 VAE",
            field=field_name,
        )
    return _loaded(module, device)


def _load_qwen21(
    header: Header, device: torch.device, dtype: torch.dtype, field_name: str
) -> torch.nn.Module:
    from genserve.models.arch.qwen21_vae import Qwen21Vae

    config = qwen21_vae.derive_config(header, field_name)
    return load_single_file(
        lambda: Qwen21Vae(config),
        header,
        device,
        dtype,
        lambda key: key,
        field_name,
        convert=qwen21_vae.to_module,
    )


def _loaded(module: torch.nn.Module, device: torch.device) -> LoadedModel:
    return LoadedModel(model=Vae(module), memory_bytes=module_bytes(module), device=device, move=module.to)
