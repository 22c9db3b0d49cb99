"""A safetensors file's header: every tensor's dtype and shape, and the file's metadata, read
without loading a tensor (a 20 GB transformer answers in milliseconds), and its tensors read one
at a time onto a device, so no loader ever holds a second copy of a model in RAM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from genserve.errors import ErrorCode, GenserveError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors' name: F32, BF16, F8_E4M3, ...
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.tensors[key].shape

    def has(self, key: str) -> bool:
        return key in self.tensors

    def dtypes(self) -> set[str]:
        return {info.dtype for info in self.tensors.values()}


def read_header(path: Path, field_name: str = "model_name") -> Header:
    """The header, or MODEL_NOT_FOUND naming the file and what is wrong with it (truncated, not
    safetensors)."""
    try:
        with safe_open(str(path), framework="pt") as reader:
            tensors = {}
            for key in reader.keys():  # noqa: SIM118 (a reader, not a dict)
                piece = reader.get_slice(key)
                tensors[key] = TensorInfo(piece.get_dtype(), tuple(piece.get_shape()))
            metadata = dict(reader.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {path.name} is not a readable safetensors file ({_reason(exc)})",
            field=field_name,
        ) from None
    return Header(Path(path), tensors, metadata)


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` is a file whose first bytes are a safetensors header (a JSON object)."""
    try:
        with Path(path).open("rb") as handle:
            start = handle.read(9)
    except OSError:
        return False
    if len(start) < 9:
        return False
    size = int.from_bytes(start[:8], "little")
    return 2 <= size < 100_000_000 and start[8:9] == b"{"


def iter_tensors(
    path: Path, keys: list[str], device: torch.device | str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors ``keys`` of the file, one at a time, onto ``device`` in their stored dtype."""
    with safe_open(str(path), framework="pt", device=str(device)) as reader:
        for key in keys:
            yield key, reader.get_tensor(key)


def metadata_json(header: Header, key: str) -> dict[str, object] | None:
    raw = header.metadata.get(key)
    if raw is None:
        return None
    try:
        found = json.loads(raw)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _reason(exc: BaseException) -> str:
    """The cause without the path (answers never carry server paths)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
