"""One model's row in the manager's table, and the stats a caller sees of it.

Every field of a ModelSlot except ``load_lock`` is read and written under the manager's lock;
the manager module holds the rules (loading, pinning, eviction), this one only the record.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import torch

from genserve.models.kinds import ModelEntry
from genserve.models.loaders.base import LoadedModel

log = logging.getLogger("genserve.models.manager")


@dataclass(frozen=True)
class ModelStats:
    kind: str
    name: str
    loaded: bool
    device: str | None
    memory_bytes: int
    request_count: int
    total_inference_ms: float
    average_inference_ms: float
    last_used: float | None
    load_time_ms: float
    pinned: int
    load_count: int = 0
    evictions: int = 0
    memory_mode: str = "resident"
    fp8_stored: bool = False  # its weights kept in fp8, computing in the compute dtype

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SlotState(Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"  # still in memory, waiting for its users to finish


@dataclass(eq=False)
class ModelSlot:
    """One model's row. Every field but ``load_lock`` is guarded by the manager lock."""

    entry: ModelEntry
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    state: SlotState = SlotState.UNLOADED
    loaded: LoadedModel | None = None
    device: str | None = None
    memory_bytes: int = 0  # the disk-size estimate while loading, the measured size once loaded
    pins: Counter[int] = field(default_factory=Counter)  # thread id -> open use() blocks
    touched: int = 0  # LRU clock tick
    request_count: int = 0
    total_ms: float = 0.0
    last_used: float | None = None
    load_time_ms: float = 0.0
    load_count: int = 0
    evictions: int = 0  # times capacity took it out (unload requests not counted)
    mode: str = "resident"  # the memory mode it was loaded with (memory.py)
    target: str | None = None  # the device it computes on (``device`` is where its weights are)
    fp8: bool = False  # weights kept in fp8 (fp8 storage)
    place_lock: threading.Lock = field(default_factory=threading.Lock)  # model-level offload's moves
    on_device: int = 0  # users that brought an offloaded model onto its device (under place_lock)

    @property
    def in_memory(self) -> bool:
        return self.state in (SlotState.LOADED, SlotState.UNLOADING)

    @property
    def label(self) -> str:
        return f"{self.entry.kind.value}/{self.entry.name}"

    def take_out(self, *, evicted: bool) -> LoadedModel:
        """The loaded model, leaving the slot unloaded (manager lock held); ``evicted``: to make room."""
        loaded = self.loaded
        assert loaded is not None
        if evicted:
            self.evictions += 1
        self.loaded, self.state, self.device, self.memory_bytes = None, SlotState.UNLOADED, None, 0
        self.mode, self.target, self.on_device, self.fp8 = "resident", None, 0, False
        return loaded

    def snapshot(self) -> ModelStats:
        count = self.request_count
        return ModelStats(
            kind=self.entry.kind.value,
            name=self.entry.name,
            loaded=self.in_memory,
            device=self.device if self.in_memory else None,
            memory_bytes=self.memory_bytes if self.in_memory else 0,
            request_count=count,
            total_inference_ms=self.total_ms,
            average_inference_ms=self.total_ms / count if count else 0.0,
            last_used=self.last_used,
            load_time_ms=self.load_time_ms,
            pinned=sum(self.pins.values()),
            load_count=self.load_count,
            evictions=self.evictions,
            memory_mode=self.mode,
            fp8_stored=self.fp8,
        )


def release(loaded: LoadedModel) -> None:
    """Free a model taken out of the table: its loader's release, then every reference the manager held."""
    try:
        if loaded.release is not None:
            loaded.release()
    except Exception:
        log.exception("releasing a model failed; dropping it anyway")
    # Drop the manager's references so the memory can go as soon as no request holds the model.
    loaded.model, loaded.release = None, None
    if loaded.device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
