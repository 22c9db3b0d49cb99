"""How many bytes a model takes once loaded in its compute dtype, read from its files' headers.

A file's size on disk misleads: an fp8 or int8 file loaded in bf16 takes twice its size, in fp32
on a CPU four times (int8 weights are dequantised at load, see ``int8_convrot``). The manager
reserves this figure before a load, so the budget and the memory mode are decided on what the
model will really take.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genserve.errors import GenserveError
from genserve.models.formats import int8_convrot, qwen21_transformer, qwen_transformer
from genserve.models.formats.fp8 import MARKERS, SCALE_SUFFIXES, detect
from genserve.models.formats.layouts import diffusers_folder, snapshot_of
from genserve.models.formats.safetensors_header import DTYPES, is_safetensors, read_header
from genserve.models.kinds import ModelEntry, ModelKind

COMPONENT = {ModelKind.DIFFUSION: "transformer", ModelKind.VAE: "vae", ModelKind.TEXT_ENCODER: "text_encoder"}


def weight_files(entry: ModelEntry) -> list[Path]:
    """The safetensors files that hold ``entry``'s weights (a snapshot's component only)."""
    path = entry.path
    if path.is_file():
        return [path] if is_safetensors(path) else []
    component = COMPONENT.get(entry.kind)
    folder = diffusers_folder(path, component) if component else None
    return sorted((folder or snapshot_of(path)).rglob("*.safetensors"))


def loaded_bytes(entry: ModelEntry, dtype: torch.dtype, keep_fp8: bool = False) -> int:
    """Floating tensors and int8 weights (dequantised at load) counted in ``dtype`` (those fp8
    storage keeps narrow at one byte, when ``keep_fp8``), the rest as stored; scales and markers
    not at all. Files that are not safetensors, or not readable (the loader names the problem),
    count their size on disk."""
    try:
        return _from_headers(weight_files(entry), dtype, keep_fp8) or entry.disk_bytes()
    except GenserveError:
        return entry.disk_bytes()


def plain_fp8(entry: ModelEntry) -> bool:
    """A single file storing its weights as unscaled fp8: what fp8 storage keeps as it is."""
    files = weight_files(entry)
    if not (entry.path.is_file() and files):
        return False
    try:
        return detect(read_header(files[0])).kind == "fp8"
    except GenserveError:
        return False


def _from_headers(files: list[Path], dtype: torch.dtype, keep_fp8: bool) -> int:
    size = torch.tensor([], dtype=dtype).element_size()
    total = 0
    for file in files:
        header = read_header(file)
        wide = qwen21_transformer.FP8_WIDE if qwen21_transformer.is_qwen21_transformer(header) else None
        narrow = qwen_transformer.fp8_stored(header, wide or qwen_transformer.FP8_WIDE) if keep_fp8 else set()
        for key, info in header.tensors.items():
            if key in MARKERS or key.endswith(SCALE_SUFFIXES):
                continue
            stored = DTYPES.get(info.dtype, torch.uint8)
            if stored.is_floating_point or info.dtype == int8_convrot.STORAGE:
                each = 1 if key in narrow else size
            else:
                each = torch.tensor([], dtype=stored).element_size()
            total += info.numel * each
    return total
