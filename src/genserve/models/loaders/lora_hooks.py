"""LoRAs on a transformer that is not a diffusers model (Qwen-Image 2.1's, genserve's own module):
each LoRA'd Linear gets a forward hook adding ``sum(strength * B(A(x)))`` to its output.

The weights stay as loaded (bf16, fp8-stored, streamed alike) and nothing is fused, so turning the
LoRAs off gives the base model's output exactly, as peft's unfused adapters do for the diffusers
models. ``AdapterGate`` decides when the set changes; this only installs a set and removes it.

LoRAs name modules as diffusers does (loaders/lora.py converts every layout to that); 2.1's files
fuse each block's SwiGLU gate and up projections into ``img_mlp.gate_up`` (gate rows first), so a
LoRA on diffusers' ``img_mlp.gate_layer`` or ``img_mlp.proj`` adds into that half of ``gate_up``'s
output, the same delta as on the unfused model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.lora import LoraWeights

PREFIX = "transformer."
SHOWN_KEYS = 3
# diffusers' unfused MLP halves -> (the fused module, which half of its outputs)
_HALVES = {".img_mlp.gate_layer": (".img_mlp.gate_up", 0), ".img_mlp.proj": (".img_mlp.gate_up", 1)}


@dataclass
class _Delta:
    down: torch.Tensor  # A: [rank, in]
    up: torch.Tensor  # B: [out, rank]
    strength: float
    half: int | None  # the half of a fused output it adds to, or None for all of it


class HookedLoras:
    """Installs one set of LoRAs on ``model`` at a time."""

    def __init__(self, model: torch.nn.Module, compute_dtype: torch.dtype | None) -> None:
        self._model = model
        self._dtype = compute_dtype
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def install(self, adapters: Sequence[tuple[LoraWeights, float]]) -> None:
        """The set (replacing any installed); none removes them. A LoRA naming a module the model
        lacks is refused, naming it, before anything changes."""
        deltas = self._deltas(adapters)
        self.clear()
        for name, items in deltas.items():
            module = self._model.get_submodule(name)
            self._handles.append(module.register_forward_hook(_hook(items)))

    def clear(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _deltas(self, adapters: Sequence[tuple[LoraWeights, float]]) -> dict[str, list[_Delta]]:
        modules = dict(self._model.named_modules())
        deltas: dict[str, list[_Delta]] = defaultdict(list)
        for lora, strength in adapters:
            unknown = []
            for key in sorted(k for k in lora.state_dict if k.endswith(".lora_A.weight")):
                name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
                name = name.removesuffix(".lora_A.weight")
                up = lora.state_dict.get(key.replace(".lora_A.weight", ".lora_B.weight"))
                target, half = _target(name)
                module = modules.get(target)
                if up is None or not isinstance(module, torch.nn.Linear):
                    unknown.append(name)
                    continue
                down = lora.state_dict[key]
                rows = module.out_features // (2 if half is not None else 1)
                if down.shape[1] != module.in_features or up.shape[0] != rows:
                    unknown.append(name)
                    continue
                dtype = self._dtype or down.dtype
                device = _device(module)
                delta = _Delta(down.to(device, dtype), up.to(device, dtype), float(strength), half)
                deltas[target].append(delta)
            if unknown:
                more = len(unknown) - SHOWN_KEYS
                shown = ", ".join(unknown[:SHOWN_KEYS]) + (f" (+{more} more)" if more > 0 else "")
                raise GenserveError(
                    ErrorCode.INVALID_INPUT,
                    f"lora_model_name: {lora.name} does not fit this diffusion model: no module of its "
                    f"shape for {shown}",
                    field="lora_model_name",
                )
        return deltas


def _target(name: str) -> tuple[str, int | None]:
    for suffix, (fused, half) in _HALVES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)] + fused, half
    return name, None


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _hook(items: list[_Delta]):  # -> a forward hook
    def add(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        for item in items:
            down, up = item.down.to(x.device), item.up.to(x.device)
            delta = F.linear(F.linear(x.to(down.dtype), down), up) * item.strength
            if item.half is None:
                output = output + delta.to(output.dtype)
            else:
                rows = delta.shape[-1]
                pad = (0, rows) if item.half == 0 else (rows, 0)
                output = output + F.pad(delta, pad).to(output.dtype)
        return output

    return add
