"""This host's real figures for registration and health: RAM from psutil, VRAM from torch.cuda.

The agent reports what the machine has, not configured guesses, because the coordinator's score
weighs free memory most. torch is imported only when CUDA devices are asked about, so that code
paths without GPUs (and tests of the coordinator) never import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psutil

MIB = 1024 * 1024


@dataclass(frozen=True)
class MemoryFigures:
    total_ram_mb: int
    free_ram_mb: int
    total_vram_mb: int  # 0 on a CPU-only agent
    free_vram_mb: int


def cuda_indices(devices: Sequence[str]) -> list[int]:
    """The CUDA device numbers among the engine's devices ('cuda' counts as cuda:0)."""
    found: list[int] = []
    for device in devices:
        if device == "cuda":
            found.append(0)
        elif device.startswith("cuda:") and device[5:].isdigit():
            found.append(int(device[5:]))
    return sorted(set(found))


def memory(devices: Sequence[str]) -> MemoryFigures:
    """RAM of the host and VRAM summed over the CUDA devices the agent's engine runs on."""
    ram = psutil.virtual_memory()
    total_vram = free_vram = 0
    indices = cuda_indices(devices)
    if indices:
        import torch

        if torch.cuda.is_available():
            for index in indices:
                free, total = torch.cuda.mem_get_info(index)
                total_vram += total // MIB
                free_vram += free // MIB
    return MemoryFigures(ram.total // MIB, ram.available // MIB, total_vram, free_vram)


def cpu_percent() -> float:
    """CPU use since the previous call (the first call primes the counter and says 0)."""
    return float(psutil.cpu_percent(interval=None))
