"""Which devices this machine has, and how a device setting from config or a request becomes one.

Device names are normalised (``"cuda"`` -> ``"cuda:0"``) because they key the per-device memory
budgets and the stats: two spellings of one GPU must never count as two devices.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError

_MEMINFO = Path("/proc/meminfo")
_CPUINFO = Path("/proc/cpuinfo")

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    kind: str
    total_bytes: int
    free_bytes: int | None
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _meminfo_bytes(field: str) -> int | None:
    """Linux reports memory here in kB; on other systems the caller falls back or reports None."""
    try:
        for line in _MEMINFO.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == field:
                return int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_total_bytes() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if total > 0:
            return total
    except (AttributeError, ValueError, OSError):
        pass
    return _meminfo_bytes("MemTotal") or 0


def _cpu_description() -> str:
    try:
        for line in _CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cuda_info(index: int) -> DeviceInfo:
    name = f"cuda:{index}"
    try:
        free, total = torch.cuda.mem_get_info(index)
        free_bytes: int | None = int(free)
    except RuntimeError:
        # A GPU busy in exclusive mode or in a broken state still has a known size.
        total, free_bytes = torch.cuda.get_device_properties(index).total_memory, None
    return DeviceInfo(name, "cuda", int(total), free_bytes, torch.cuda.get_device_name(index))


def list_devices() -> list[DeviceInfo]:
    """CUDA devices first (the order ``"auto"`` picks from), then the CPU, which is always there."""
    devices = [_cuda_info(i) for i in range(_cuda_count())]
    cpu = DeviceInfo("cpu", "cpu", _cpu_total_bytes(), _meminfo_bytes("MemAvailable"), _cpu_description())
    return [*devices, cpu]


def device_name(device: torch.device) -> str:
    """The one spelling used as a key: ``cuda`` without an index means the current CUDA device."""
    if device.type == "cuda" and device.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return f"cuda:{index}"
    return str(device)


def _unavailable(spec: str) -> GenserveError:
    available = ["cpu", *(f"cuda:{i}" for i in range(_cuda_count()))]
    return GenserveError(
        ErrorCode.INVALID_INPUT,
        f"device: {spec!r} is not an available device; available: auto, {', '.join(available)}",
        field="device",
        available=available,
    )


def resolve_device(spec: str) -> torch.device:
    """Check a device setting against this machine, so a typo fails with the list of real choices."""
    text = spec.strip().lower()
    count = _cuda_count()
    if text == "auto":
        return torch.device("cuda", 0) if count else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda":
        if not count:
            raise _unavailable(spec)
        return torch.device("cuda", torch.cuda.current_device())
    prefix, sep, index = text.partition(":")
    if prefix == "cuda" and sep and index.isdigit() and int(index) < count:
        return torch.device("cuda", int(index))
    raise _unavailable(spec)


def default_dtype(device: torch.device | str, setting: str = "auto") -> torch.dtype:
    """``auto`` keeps CPUs on float32 (bfloat16 matmuls are slow or missing there) and GPUs on bfloat16."""
    text = setting.strip().lower()
    if text == "auto":
        kind = torch.device(device).type
        return torch.bfloat16 if kind == "cuda" else torch.float32
    if text in _DTYPES:
        return _DTYPES[text]
    raise GenserveError(
        ErrorCode.INVALID_INPUT,
        f"dtype: {setting!r} is not a supported dtype; choose auto, float32, bfloat16 or float16",
        field="dtype",
    )
