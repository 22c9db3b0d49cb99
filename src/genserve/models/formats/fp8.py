"""fp8 weight files, as ComfyUI users have them, and their scales.

Three forms, told apart by the header alone:
- ``fp8``: weights stored as float8_e4m3fn with no scales (``*_fp8_e4m3fn`` files): a plain cast,
  the value is the stored one.
- ``scaled_fp8``: ComfyUI's older scaled files: a marker key ``scaled_fp8``, and per layer
  ``<layer>.scale_weight`` (an fp32 scalar, sometimes per row) and optionally ``scale_input``: the
  real weight is ``weight * scale_weight``.
- ``weight_scale``: ComfyUI's newer files: ``<layer>.weight_scale`` (and ``input_scale``), with
  ``<layer>.comfy_quant`` (uint8 JSON such as ``{"format": "float8_e4m3fn"}``) or the metadata
  ``_quantization_metadata``.

A scaled file is never loaded without its scales: transformers and diffusers would only warn
about the unexpected scale keys and load the raw fp8 values, which gives silently wrong outputs.
Every scaled fp8 weight must have its scale, or the load is refused naming the file and layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats.safetensors_header import Header

FP8_DTYPES = {"F8_E4M3", "F8_E5M2"}
# Keys that describe the quantisation, not weights of the model: dropped once applied.
SCALE_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".input_scale", ".comfy_quant")
MARKERS = ("scaled_fp8",)


@dataclass(frozen=True)
class Fp8Scheme:
    kind: str  # "none", "fp8", "scaled_fp8" or "weight_scale"
    scales: dict[str, str] = field(default_factory=dict)  # weight key -> its scale's key

    @property
    def label(self) -> str:
        return {"none": "", "fp8": "fp8 e4m3fn", "scaled_fp8": "fp8 scaled", "weight_scale": "fp8 scaled"}[
            self.kind
        ]

    def is_extra(self, key: str) -> bool:
        """A key of the quantisation itself (a scale, a marker), not one of the model's weights."""
        return key in MARKERS or key.endswith(SCALE_SUFFIXES)


def detect(header: Header, field_name: str = "model_name") -> Fp8Scheme:
    """The file's fp8 form; a scaled file with a weight that has no scale is refused here."""
    fp8 = [key for key, info in header.tensors.items() if info.dtype in FP8_DTYPES and key not in MARKERS]
    if not fp8:
        return Fp8Scheme("none")
    keys = header.tensors
    old = "scaled_fp8" in keys or any(key.endswith(".scale_weight") for key in keys)
    new = "_quantization_metadata" in header.metadata or any(
        key.endswith((".weight_scale", ".comfy_quant")) for key in keys
    )
    if not old and not new:
        return Fp8Scheme("fp8")
    suffix = ".scale_weight" if old else "_scale"
    scales = {}
    for key in fp8:
        stem = key[: -len(".weight")] if key.endswith(".weight") else key
        scale = f"{stem}.scale_weight" if old else f"{stem}.weight{suffix}"
        if scale not in keys:
            raise GenserveError(
                ErrorCode.MODEL_NOT_FOUND,
                f"{field_name}: {header.path.name} is a scaled fp8 file, but {key} has no scale "
                f"({scale} is missing); it cannot be loaded without its scales",
                field=field_name,
            )
        scales[key] = scale
    return Fp8Scheme("scaled_fp8" if old else "weight_scale", scales)


def dequantize(tensor: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """A stored weight in the compute ``dtype``: fp8 values times their scale (a scalar or one per
    row), cast straight to ``dtype`` (no fp32 copy of a whole model is ever made)."""
    if scale is None:
        return tensor.to(dtype)
    scale = scale.to(torch.float32)
    if scale.numel() > 1 and tensor.dim() >= 1 and scale.numel() == tensor.shape[0]:
        scale = scale.reshape(-1, *([1] * (tensor.dim() - 1)))
    return (tensor.to(torch.float32) * scale).to(dtype)
