"""Diffusion transformer loader, and the gate that applies LoRAs to a shared transformer.

Adapters mutate the transformer in place, so two concurrent runs with different LoRAs or
strengths must never overlap. ``AdapterGate`` lets any number of runs that want the same set of
(LoRA, strength) share the model at once; a run that wants another set waits until the current
users finish, then switches. A run without a LoRA disables adapters, giving the base model's
output exactly.

A set of several LoRAs (a ComfyUI chain of LoraLoaderModelOnly nodes) is active at once: peft adds
each active adapter's output scaled by its weight, which is ComfyUI's W + sum(strength_i * delta_i).
A LoRA named twice is one adapter at the sum of its strengths (the delta is linear in the
strength), and the set is keyed in a fixed order, so the chain's order never changes the output.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.arch.qwen21_transformer import Qwen21Transformer
from genserve.models.formats import fp8, qwen21_transformer, qwen_transformer
from genserve.models.formats.layouts import diffusers_folder
from genserve.models.formats.safetensors_header import is_safetensors, read_header
from genserve.models.loaders.base import LoadedModel, module_bytes
from genserve.models.loaders.lora import LoraWeights
from genserve.models.loaders.lora_hooks import HookedLoras
from genserve.models.loaders.single_file import load_single_file
from genserve.models.memory import HOST
from genserve.models.registry import ModelEntry

# A stored copy's fp8 type (ModelEntry.storage).
FP8_TYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
# What a run asks the gate for: LoRAs with their strengths, in chain order.
Adapters = Sequence[tuple[LoraWeights, float]]
_UNKNOWN = (("", math.nan),)  # after a failed switch: the adapters' state must be set again


class AdapterGate:
    def __init__(self, transformer: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> None:
        self._transformer = transformer
        self._compute_dtype = compute_dtype
        self._cond = threading.Condition()
        self._active: tuple[tuple[str, float], ...] = ()
        self._users = 0
        self._adapters: set[str] = set()
        # genserve's own modules (Qwen-Image 2.1's) have no peft support: LoRAs go on as hooks.
        peft = hasattr(transformer, "load_lora_adapter")
        self._hooks = None if peft else HookedLoras(transformer, compute_dtype)

    @contextmanager
    def applied(self, lora: LoraWeights | None, strength: float) -> Iterator[None]:
        """One LoRA at ``strength``, or the base model for None."""
        with self.stacked(() if lora is None else ((lora, strength),)):
            yield

    @contextmanager
    def stacked(self, adapters: Adapters) -> Iterator[None]:
        """Every LoRA of ``adapters`` at once, each at its strength; none gives the base model."""
        merged = _merged(adapters)
        want = tuple((name, strength) for name, (_, strength) in merged.items())
        with self._cond:
            while self._users > 0 and self._active != want:
                self._cond.wait()
            if self._active != want:
                self._active = _UNKNOWN
                self._switch(list(merged.values()))
            self._active = want
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def _switch(self, adapters: list[tuple[LoraWeights, float]]) -> None:
        model = self._transformer
        if self._hooks is not None:
            self._hooks.install(adapters)
            return
        if not adapters:
            if self._adapters:
                model.disable_adapters()
            return
        for lora, _ in adapters:
            if lora.adapter_name not in self._adapters:
                self._load(lora)
        model.enable_adapters()
        names = [lora.adapter_name for lora, _ in adapters]
        model.set_adapters(names, weights=[strength for _, strength in adapters])

    def _load(self, lora: LoraWeights) -> None:
        try:
            self._transformer.load_lora_adapter(
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
        self._adapters_in_compute_dtype(lora)

    def _adapters_in_compute_dtype(self, lora: LoraWeights) -> None:
        """peft makes an adapter in its base layer's dtype; on an fp8-stored base that is fp8, which
        cannot compute and has already rounded the LoRA's values. The adapter (small) is kept in
        the compute dtype, unfused, holding the file's exact values again."""
        if self._compute_dtype is None:
            return
        marker = f".{lora.adapter_name}."
        for name, param in self._transformer.named_parameters():
            if marker not in name:
                continue
            source = lora.state_dict.get("transformer." + name.replace(marker, "."))
            if source is not None and source.shape == param.shape:
                param.data = source.to(device=param.device, dtype=self._compute_dtype)
            elif param.dtype != self._compute_dtype:
                param.data = param.data.to(self._compute_dtype)


def _merged(adapters: Adapters) -> dict[str, tuple[LoraWeights, float]]:
    """Per adapter, sorted by name, its LoRA and the exact sum of its strengths (``fsum``, so
    neither the chain's order nor a repeat changes the strength by rounding)."""
    loras: dict[str, LoraWeights] = {}
    strengths: dict[str, list[float]] = {}
    for lora, strength in adapters:
        loras[lora.adapter_name] = lora
        strengths.setdefault(lora.adapter_name, []).append(float(strength))
    return {name: (loras[name], math.fsum(strengths[name])) for name in sorted(loras)}


@dataclass
class DiffusionModel:
    """What ``manager.use('diffusion_models', ...)`` yields: the transformer and its adapter gate."""

    transformer: torch.nn.Module
    gate: AdapterGate = field(init=False)
    streamed_to: torch.device | None = None  # block streaming: where the blocks compute
    compute_dtype: torch.dtype | None = None  # when the weights are stored in another (fp8 storage)

    def __post_init__(self) -> None:
        self.gate = AdapterGate(self.transformer, self.compute_dtype)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are given in: the compute dtype, whatever the weights are stored in."""
        return self.compute_dtype or next(self.transformer.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Where inputs go: the streaming device, else where the weights are."""
        return self.streamed_to or next(self.transformer.parameters()).device

    def stream(self, device: torch.device) -> int:
        """diffusers' group offloading by single blocks; the bytes on ``device`` at once."""
        from diffusers.hooks import apply_group_offloading

        apply_group_offloading(
            self.transformer,
            onload_device=device,
            offload_device=HOST,
            offload_type="block_level",
            num_blocks_per_group=1,
        )
        self.streamed_to = device
        blocks = list(getattr(self.transformer, "transformer_blocks", []))
        in_blocks = sum(module_bytes(block) for block in blocks)
        largest = max((module_bytes(block) for block in blocks), default=0)
        return module_bytes(self.transformer) - in_blocks + largest


def load_transformer(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A diffusers folder (``config.json`` + weights, also a snapshot's ``transformer/``) or a
    ComfyUI single file (bare or prefixed keys, bf16 or fp8 plain or scaled). An unscaled fp8 file
    offers ``narrow``: its weights kept in fp8 (the manager decides, see fp8 storage)."""
    transformer, fp8 = _load_module(entry, device, dtype)
    model = DiffusionModel(transformer, compute_dtype=dtype)
    storage = FP8_TYPES[entry.storage] if entry.storage else torch.float8_e4m3fn

    def narrow() -> int:
        wide = qwen21_transformer.FP8_WIDE if is_qwen21(transformer) else qwen_transformer.FP8_WIDE
        _keep_fp8(transformer, dtype, wide, storage)
        return module_bytes(transformer)

    return LoadedModel(
        model=model,
        memory_bytes=module_bytes(transformer),
        device=device,
        move=transformer.to,
        stream=model.stream,
        narrow=narrow if fp8 or entry.storage else None,
    )


def _load_module(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, bool]:
    """The transformer, and whether its file stores unscaled fp8 weights."""
    from diffusers import QwenImageTransformer2DModel

    field_name = "unet_model_name"
    folder = diffusers_folder(entry.path, "transformer")
    if folder is not None:
        transformer = QwenImageTransformer2DModel.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
        return transformer.requires_grad_(False), False
    if not (entry.path.is_file() and is_safetensors(entry.path)):
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {entry.name} is neither a diffusers folder (config.json and weights) nor a "
            "safetensors single file of a Qwen-Image transformer",
            field=field_name,
        )
    header = read_header(entry.path, field_name)
    if qwen21_transformer.is_qwen21_transformer(header):
        config21 = qwen21_transformer.derive_config(header, field_name)
        transformer = load_single_file(
            lambda: Qwen21Transformer(config21),
            header,
            device,
            dtype,
            qwen21_transformer.model_key,
            field_name,
            convert=qwen21_transformer.fuse_mlp,
        )
        return transformer, fp8.detect(header, field_name).kind == "fp8"
    if not qwen_transformer.is_qwen_transformer(header):
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {entry.name} is not a Qwen-Image or Qwen-Image 2.1 transformer (no txt_norm "
            "or txt_in.text_norm, and img_in weights)",
            field=field_name,
        )
    config = qwen_transformer.derive_config(header, field_name)
    transformer = load_single_file(
        lambda: QwenImageTransformer2DModel(**config), header, device, dtype, _transformer_key, field_name
    )
    return transformer, fp8.detect(header, field_name).kind == "fp8"


def is_qwen21_file(path: Path) -> bool:
    """Whether a diffusion-model entry is a Qwen-Image 2.1 single file (its header only is read)."""
    if not (path.is_file() and is_safetensors(path)):
        return False
    return qwen21_transformer.is_qwen21_transformer(read_header(path, "unet_name"))


def is_qwen21(transformer: torch.nn.Module) -> bool:
    """Whether a loaded diffusion model is Qwen-Image 2.1's (its own sampling path)."""
    return isinstance(transformer, Qwen21Transformer)


def _keep_fp8(
    transformer: torch.nn.Module, dtype: torch.dtype, wide: tuple[str, ...], storage: torch.dtype
) -> None:
    """An unscaled fp8 file's values are exact in fp8, so storing them as fp8 loses nothing; a stored
    copy (UNETLoader's weight_dtype on a wider file) rounds them, as the user asked and ComfyUI
    does. The modules ``wide`` names stay in the compute dtype (sizes.loaded_bytes counts the same)."""
    from diffusers.hooks import apply_layerwise_casting

    apply_layerwise_casting(
        transformer,
        storage_dtype=storage,
        compute_dtype=dtype,
        skip_modules_pattern=wide,
    )


def _transformer_key(key: str) -> str | None:
    return None if key == qwen_transformer.ZERO_COND_MARKER else qwen_transformer.model_key(key)
