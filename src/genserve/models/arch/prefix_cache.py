"""The prefix key/value cache of Qwen-Image 2.1's sampling run (ComfyUI's QwenImage21Cache).

The prompt and reference tokens attend causally and modulate from t = 0, so their keys and values
are the same at every step: the first step computes them, the rest attend to the stored ones and
run the target's tokens only. That saves most of an edit's compute (the references often outnumber
the target) at the cost of the stored keys and values: 2 x layers x prefix tokens x width values.

Where they live and in what precision is the user's trade: ``device`` auto (the model's device
when it has room for them, else host memory), gpu (the model's device), cpu (host memory, copied
in block by block) or off (recompute the prefix every step, the one way to rule the cache out);
``dtype`` default (the compute dtype: lossless), int8 (half the memory; a scale per token and
head) or int4 (a quarter: two values a byte; about twice int8's error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

CacheDevice = Literal["auto", "gpu", "cpu", "off"]
CacheDtype = Literal["default", "int8", "int4"]
DEVICES: tuple[str, ...] = ("auto", "gpu", "cpu", "off")
DTYPES: tuple[str, ...] = ("default", "int8", "int4")
# auto keeps the cache on an accelerator when this many times its size stays free.
AUTO_HEADROOM = 4


@dataclass(frozen=True)
class CacheOptions:
    device: CacheDevice = "auto"
    dtype: CacheDtype = "default"


@dataclass
class _Stored:
    values: torch.Tensor  # [B, 2, heads, P, head_dim] (packed for int4)
    scale: torch.Tensor | None  # [B, 2, heads, P, 1] for int8/int4


@dataclass
class PrefixCache:
    """One conditioning's prefix for one sampling run; ``start`` resets it for a new target shape."""

    options: CacheOptions
    compute_device: torch.device
    layers: list[_Stored | None] = field(default_factory=list)
    shape: tuple[int, int, int] | None = None
    target_frame: float = 0.0
    filled: bool = False
    store: torch.device | None = None
    depth: int = 1  # the model's blocks: one stored layer each

    def filled_for(self, shape: tuple[int, int, int]) -> bool:
        return self.filled and self.shape == shape

    def start(self, shape: tuple[int, int, int], target_frame: float, depth: int) -> None:
        self.layers, self.shape, self.target_frame, self.filled, self.store = (
            [],
            shape,
            target_frame,
            False,
            None,
        )
        self.depth = depth

    def put(self, index: int, kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        stacked = torch.stack(kv, dim=1)  # [B, 2, heads, P, head_dim]
        if self.store is None:
            self.store = self._choose_store(stacked)
        values, scale = _quantize(stacked, self.options.dtype)
        stored = _Stored(values.to(self.store), None if scale is None else scale.to(self.store))
        while len(self.layers) <= index:
            self.layers.append(None)
        self.layers[index] = stored

    def take(
        self, index: int, device: torch.device, dtype: torch.dtype, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stored = self.layers[index]
        assert stored is not None, "a prefix layer was read before it was stored"
        values = stored.values.to(device, non_blocking=True)
        scale = None if stored.scale is None else stored.scale.to(device, non_blocking=True)
        kv = _dequantize(values, scale, self.options.dtype, dtype)
        keys, vals = kv.unbind(1)
        return keys.expand(batch, -1, -1, -1), vals.expand(batch, -1, -1, -1)

    def finish(self) -> None:
        self.filled = True

    def nbytes(self) -> int:
        total = 0
        for stored in self.layers:
            if stored is not None:
                total += stored.values.numel() * stored.values.element_size()
                if stored.scale is not None:
                    total += stored.scale.numel() * stored.scale.element_size()
        return total

    def _choose_store(self, first_layer: torch.Tensor) -> torch.device:
        if self.options.device == "cpu":
            return torch.device("cpu")
        if self.options.device == "gpu" or self.compute_device.type != "cuda":
            return self.compute_device
        per_value = {"default": first_layer.element_size(), "int8": 1.0, "int4": 0.5}[self.options.dtype]
        need = first_layer.numel() * per_value * self.depth
        free, _ = torch.cuda.mem_get_info(self.compute_device)
        return self.compute_device if free > AUTO_HEADROOM * need else torch.device("cpu")


def make_cache(options: CacheOptions, compute_device: torch.device) -> PrefixCache | None:
    """A cache for one conditioning, or None when the user turned it off."""
    return None if options.device == "off" else PrefixCache(options, compute_device)


def _quantize(x: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if dtype == "default":
        return x, None
    levels = 127 if dtype == "int8" else 7
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / levels
    q = torch.round(x.float() / scale).clamp(-levels, levels).to(torch.int8)
    if dtype == "int4":
        nibbles = (q + 8).to(torch.uint8)  # 1..15
        q = (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).view(torch.int8)
    return q, scale.to(torch.float16)


def _dequantize(q: torch.Tensor, scale: torch.Tensor | None, dtype: str, out: torch.dtype) -> torch.Tensor:
    if scale is None:
        return q.to(out)
    if dtype == "int4":
        packed = q.view(torch.uint8)
        low = (packed & 0x0F).to(torch.int16) - 8
        high = (packed >> 4).to(torch.int16) - 8
        q = torch.stack([low, high], dim=-1).flatten(-2)
    return (q.float() * scale.float()).to(out)
