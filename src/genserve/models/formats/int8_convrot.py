"""ComfyUI's int8 weight files (``int8_tensorwise``, most often with ``convrot``), dequantised at load.

ComfyUI's Qwen-Image 2.1 release (``qwen_image_2.1_int8_convrot.safetensors``,
``qwen3vl_8b_int8_convrot.safetensors``) stores each quantised layer as three tensors:

- ``<layer>.weight``: int8 ``[out, in]`` (an embedding table ``[vocab, dim]``; a bank of experts
  ``[E, out, in]``), the values ``round(rotated / scale)`` clamped to [-128, 127];
- ``<layer>.weight_scale``: float32, one per row ``[out, 1]`` with ``convrot`` (``[E, out, 1]``
  for a bank; ``[out]`` from some converters), a scalar for plain ``int8_tensorwise``;
- ``<layer>.comfy_quant``: uint8 bytes of a JSON object such as
  ``{"format": "int8_tensorwise", "convrot": true, "convrot_groupsize": 256}`` (the two convrot
  fields may sit in a ``"params"`` object; ``full_precision_matrix_mult`` and ``num_experts`` may
  be there too). The same objects may instead come as the file's ``_quantization_metadata``
  (``{"layers": {"<layer>": {...}}}``), which ComfyUI turns into the markers.

``convrot`` rotates each row's groups of ``convrot_groupsize`` (a power of 4, 256 by default)
consecutive input features by the normalised regular Hadamard matrix ``H`` (the Kronecker power of
the 4x4 ``[[1,1,1,-1],[1,1,-1,1],[1,-1,1,1],[-1,1,1,1]]``, divided by ``sqrt(group)``) before the
per-row quantisation: ``W_rot = W @ H.T`` per group, which spreads outliers over the group.
ComfyUI rotates the activations the same way at run time (``x @ H``) and runs an int8 matmul.
``H`` is symmetric and orthogonal, so it is its own inverse: genserve applies it once more to the
dequantised rows and gets back ``W`` in the compute dtype, for a plain ``nn.Linear`` (so a model
takes the memory of bf16, not int8). The rotation is taken on the int8 values with the +-1 matrix, which is
exact (integers in float32, whatever the matmul precision), then scaled: a single rounding.

Every other ``comfy_quant`` format (nvfp4, mxfp8, convrot_w4a4, asym_w4a8_int8, awq_w4a16, ...)
is refused naming the file and the layer, as is an int8 tensor without its config or scale: a
quantised weight is never loaded as if it were a plain one. fp8 formats are left to ``fp8.py``.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats.safetensors_header import Header, iter_tensors, metadata_json

FORMAT = "int8_tensorwise"
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")  # dequantised by fp8.py
MARKER = ".comfy_quant"
SCALE = ".weight_scale"
STORAGE = "I8"
METADATA_KEY = "_quantization_metadata"
DEFAULT_GROUP = 256
CHUNK_BYTES = 64 << 20  # float32 work space per dequantisation step


@dataclass(frozen=True)
class Int8Config:
    """One layer's ``comfy_quant`` for ``int8_tensorwise``: rotated or not, and the group size."""

    convrot: bool = True
    group_size: int = DEFAULT_GROUP

    @classmethod
    def parse(cls, conf: Mapping[str, object]) -> Int8Config:
        params = conf.get("params")
        nested: Mapping[str, object] = params if isinstance(params, Mapping) else {}
        convrot = bool(conf.get("convrot", nested.get("convrot", False)))
        group = conf.get("convrot_groupsize", nested.get("convrot_groupsize", DEFAULT_GROUP))
        if isinstance(group, bool) or not isinstance(group, int | str):
            raise ValueError(f"convrot_groupsize {group!r} is not an integer")
        return cls(convrot, int(group))

    def to_json(self) -> dict[str, object]:
        """The object ComfyUI writes (its key order, so the bytes match too)."""
        conf: dict[str, object] = {"format": FORMAT}
        if self.convrot:
            conf.update(convrot=True, convrot_groupsize=self.group_size)
        return conf


@dataclass(frozen=True)
class Int8Layer:
    weight: str  # the int8 weight's key
    scale: str  # its weight_scale's key
    config: Int8Config


@dataclass(frozen=True)
class Int8Scheme:
    """The file's int8 layers (by weight key) and the count of every comfy_quant format in it."""

    layers: dict[str, Int8Layer] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.layers:
            return ""
        return "int8 convrot" if any(layer.config.convrot for layer in self.layers.values()) else "int8"

    def is_extra(self, key: str) -> bool:
        """A marker or a scale of this file's quantisation, not one of the model's weights."""
        if key.endswith(MARKER):
            return True
        return key.endswith(SCALE) and f"{key[: -len(SCALE)]}.weight" in self.layers

    def scales(self, header: Header, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Each int8 weight key -> its scale tensor (small: one float per row), on ``device``."""
        if not self.layers:
            return {}
        by_scale = {layer.scale: weight for weight, layer in self.layers.items()}
        return {by_scale[key]: value for key, value in iter_tensors(header.path, list(by_scale), device)}


def read_configs(header: Header, field_name: str = "model_name") -> dict[str, dict[str, object]]:
    """Every quantised layer's config by layer name: the ``.comfy_quant`` markers, and for layers
    without one, the ``_quantization_metadata`` entries. A marker that is not JSON is refused."""
    configs: dict[str, dict[str, object]] = {}
    meta = metadata_json(header, METADATA_KEY) or {}
    layers = meta.get("layers")
    for name, conf in (layers if isinstance(layers, dict) else {}).items():
        found = {"format": conf} if isinstance(conf, str) else conf
        if isinstance(found, dict):
            configs[str(name)] = found
    markers = [key for key in header.names() if key.endswith(MARKER)]
    for key, value in iter_tensors(header.path, markers):
        try:
            conf = json.loads(value.cpu().numpy().tobytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            conf = None
        if not isinstance(conf, dict):
            raise _refusal(header, f"its quantisation marker {key} is not a JSON object", field_name)
        configs[key[: -len(MARKER)]] = conf
    return configs


def scan(header: Header, field_name: str = "model_name") -> Int8Scheme:
    """The file's formats and int8 layers, refusing nothing but unreadable markers (for listings)."""
    configs = read_configs(header, field_name) if _may_be_quantised(header) else {}
    formats = Counter(str(conf.get("format")) for conf in configs.values())
    layers = {}
    for name, conf in configs.items():
        if conf.get("format") == FORMAT and header.has(f"{name}.weight"):
            layers[f"{name}.weight"] = Int8Layer(f"{name}.weight", f"{name}{SCALE}", Int8Config.parse(conf))
    return Int8Scheme(layers, dict(formats))


def detect(header: Header, field_name: str = "model_name") -> Int8Scheme:
    """The int8 layers genserve dequantises; any layer it cannot load right is refused here, naming
    the file and the layer: another quant format, a missing scale, an int8 tensor with no config."""
    configs = read_configs(header, field_name) if _may_be_quantised(header) else {}
    layers: dict[str, Int8Layer] = {}
    for name, conf in sorted(configs.items()):
        fmt = conf.get("format")
        if fmt in FP8_FORMATS:
            continue
        if fmt != FORMAT:
            raise _refusal(
                header,
                f"{name} is in ComfyUI's {fmt!r} quantisation format, which genserve does not load "
                f"(it loads bf16/fp16/fp32, fp8 and int8_tensorwise with or without convrot)",
                field_name,
            )
        layer = _int8_layer(header, name, conf, field_name)
        if layer is not None:
            layers[layer.weight] = layer
    for key, info in header.tensors.items():
        if info.dtype == STORAGE and key not in layers:
            raise _refusal(
                header, f"{key} is stored as int8 with no comfy_quant config to dequantise it", field_name
            )
    return Int8Scheme(layers, dict(Counter(str(conf.get("format")) for conf in configs.values())))


def rotate(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x``'s last axis, in groups of ``group_size``, times the normalised regular Hadamard matrix
    (symmetric and orthogonal: rotating twice gives ``x`` back), in ``x``'s dtype. The product is
    taken with the +-1 matrix and divided by ``sqrt(group_size)`` (a power of 2) after: on int8
    values it is exact in any float32 matmul mode (TF32 and bf16 hold the +-1 and the integers)."""
    size = x.shape[-1]
    if size % group_size:
        raise ValueError(f"the convrot group size {group_size} does not divide the last axis ({size})")
    signs = hadamard_signs(group_size, x.device, x.dtype)
    rotated = x.reshape(-1, size // group_size, group_size) @ signs
    return (rotated / math.sqrt(group_size)).reshape(x.shape)


def hadamard_signs(
    size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The regular Hadamard matrix of ``size`` (a power of 4), unnormalised: the Kronecker power of
    ``[[1,1,1,-1],[1,1,-1,1],[1,-1,1,1],[-1,1,1,1]]``, as ComfyUI's convrot builds it."""
    if _power_of_four(size) is None:
        raise ValueError(f"the convrot group size must be a power of 4, got {size}")
    return _signs(size).to(device=device, dtype=dtype)


def dequantize(
    weight: torch.Tensor, scale: torch.Tensor, config: Int8Config, dtype: torch.dtype
) -> torch.Tensor:
    """The int8 ``weight`` as the original in ``dtype``, on its device: un-rotated (when convrot) and
    times its ``scale`` (a scalar or one per row), a few rows at a time, so the float32 work space
    stays small whatever the tensor (an embedding table of 150k rows included)."""
    rows = weight.reshape(-1, weight.shape[-1]) if weight.dim() > 1 else weight.reshape(1, -1)
    scale = scale.to(device=weight.device, dtype=torch.float32).reshape(-1)
    per_row = scale.numel() > 1
    if per_row and scale.numel() != rows.shape[0]:
        raise ValueError(f"{scale.numel()} scales for {rows.shape[0]} rows")
    out = torch.empty(rows.shape, dtype=dtype, device=weight.device)
    step = max(1, CHUNK_BYTES // (4 * rows.shape[1]))
    for first in range(0, rows.shape[0], step):
        part = rows[first : first + step].to(torch.float32)
        if config.convrot:
            part = rotate(part, config.group_size)
        factor = scale[first : first + step, None] if per_row else scale
        out[first : first + step] = part * factor
    return out.reshape(weight.shape)


def quantize(weight: torch.Tensor, config: Int8Config = Int8Config()) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scale) as ComfyUI's quantiser writes them: with convrot the rows rotated,
    one scale per row ``[out, 1]``; without, one scale for the tensor."""
    value = weight.to(torch.float32)
    if config.convrot:
        value = rotate(value, config.group_size)
        scale = value.abs().amax(dim=-1, keepdim=True) / 127.0
    else:
        scale = value.abs().amax() / 127.0
    scale = scale.clamp(min=1e-30)
    return (value / scale).round().clamp(-128, 127).to(torch.int8), scale


def quantize_state_dict(
    state: Mapping[str, torch.Tensor], keys: Iterable[str], config: Int8Config = Int8Config()
) -> dict[str, torch.Tensor]:
    """``state`` with each of ``keys`` (``<layer>.weight``) stored as ComfyUI's int8 layout: the int8
    weight, ``<layer>.weight_scale`` and ``<layer>.comfy_quant``; the other tensors unchanged. With
    convrot, a layer whose input size the group does not divide takes the largest power of 4 below
    it that does (as ComfyUI's converter)."""
    chosen = set(keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in chosen:
            out[key] = value
            continue
        if not key.endswith(".weight") or not value.is_floating_point():
            raise ValueError(f"{key} is not a floating weight to quantise")
        layer = _fit(config, value.shape[-1]) if config.convrot else config
        stem = key[: -len(".weight")]
        out[key], out[f"{stem}{SCALE}"] = quantize(value, layer)
        payload = json.dumps(layer.to_json()).encode("utf-8")
        out[f"{stem}{MARKER}"] = torch.tensor(list(payload), dtype=torch.uint8)
    return out


def _int8_layer(header: Header, name: str, conf: Mapping[str, object], field_name: str) -> Int8Layer | None:
    weight, scale = f"{name}.weight", f"{name}{SCALE}"
    if not header.has(weight):
        return None  # a config for a weight this file does not hold: nothing to load wrong
    try:
        config = Int8Config.parse(conf)
    except (TypeError, ValueError):
        cause = f"{name} has an unreadable convrot_groupsize in {dict(conf)}"
        raise _refusal(header, cause, field_name) from None
    info = header.tensors[weight]
    if info.dtype != STORAGE:
        cause = f"{weight} is marked {FORMAT} but stored as {info.dtype}, not int8"
        raise _refusal(header, cause, field_name)
    if not header.has(scale):
        raise _refusal(header, f"{weight} is int8 without its scale ({scale} is missing)", field_name)
    rows = info.numel // info.shape[-1] if info.shape and info.shape[-1] else 0
    if header.tensors[scale].numel not in {1, rows}:
        cause = f"{scale} has shape {list(header.shape(scale))}, not one scale per row of {weight}"
        raise _refusal(header, cause, field_name)
    if config.convrot and (
        _power_of_four(config.group_size) is None or not info.shape or info.shape[-1] % config.group_size
    ):
        raise _refusal(
            header,
            f"{weight} has convrot group size {config.group_size}, not a power of 4 dividing its "
            f"{info.shape[-1] if info.shape else 0} input features",
            field_name,
        )
    return Int8Layer(weight, scale, config)


def _fit(config: Int8Config, size: int) -> Int8Config:
    group = config.group_size
    while group >= 4 and size % group:
        group //= 4
    if group < 4 or _power_of_four(group) is None:
        raise ValueError(f"no convrot group (a power of 4 up to {config.group_size}) divides {size}")
    return Int8Config(True, group)


@functools.lru_cache(maxsize=8)
def _signs(size: int) -> torch.Tensor:
    base = torch.tensor([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=torch.float32)
    signs = base
    while signs.shape[0] < size:
        signs = torch.kron(signs, base)
    return signs


def _power_of_four(size: int) -> int | None:
    """k where ``size == 4**k`` (k >= 1), or None."""
    steps = 0
    while size > 1 and size % 4 == 0:
        size //= 4
        steps += 1
    return steps if size == 1 and steps else None


def _may_be_quantised(header: Header) -> bool:
    return METADATA_KEY in header.metadata or any(key.endswith(MARKER) for key in header.names())


def _refusal(header: Header, cause: str, field_name: str) -> GenserveError:
    return GenserveError(
        ErrorCode.MODEL_NOT_FOUND,
        f"{field_name}: {header.path.name} cannot be loaded: {cause}",
        field=field_name,
    )
