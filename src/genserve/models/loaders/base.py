"""What every loader returns, and how the manager measures it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from genserve.models.registry import ModelEntry


@dataclass
class LoadedModel:
    """A model in memory. ``model`` is what ``ModelManager.use`` yields to a service."""

    model: Any
    memory_bytes: int
    device: torch.device
    release: Callable[[], None] | None = field(default=None, repr=False)
    # Model-level offload: puts the weights on a device (the host between uses, the device in use).
    move: Callable[[torch.device], None] | None = field(default=None, repr=False)
    # Block streaming: weights stay on the host and come onto ``device`` a group of blocks at a
    # time; returns the bytes on the device at once (the largest group, plus what is in no block).
    stream: Callable[[torch.device], int] | None = field(default=None, repr=False)
    # fp8 storage: keep the weights of an unscaled fp8 file in fp8, computing in the compute dtype;
    # returns the bytes after. Offered only by a loader whose file stores its weights so.
    narrow: Callable[[], int] | None = field(default=None, repr=False)


class Loader(Protocol):
    def __call__(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel: ...


def module_bytes(*modules: torch.nn.Module) -> int:
    """Bytes held by parameters and buffers: the real memory figure, not a guess from file size."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total
