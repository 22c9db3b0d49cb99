"""Model pools: the capacity rules one ModelManager applies to a group of model kinds.

Every kind belongs to one pool. A pool has its own count limit, memory budget per device,
eviction policy, idle timeout and capacity wait, so that the diffusion parts (few, large, kept
until evicted, a refusal at once when every slot is busy) and the lip-sync models (many small
ONNX models, a wait for a free slot, an idle life) are kept by one manager under different rules,
and one table accounts for every loaded model's memory on every device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models import capacity
from genserve.models.devices import device_name
from genserve.models.kinds import ModelKind
from genserve.models.slots import ModelSlot

Eviction = Literal["lru", "lfu"]
DEFAULT_POOL = "models"


@dataclass(frozen=True)
class PoolKeys:
    """The settings a pool comes from, so a refusal names the key an operator would change."""

    max_loaded: str = "models.max_loaded"
    memory_budget: str = "models.memory_budget_mb"
    capacity_wait: str = "models.capacity_wait_s"


@dataclass(frozen=True, eq=False)
class Pool:
    """One pool's rules. ``kinds`` empty means every kind no other pool names (the default pool)."""

    name: str = DEFAULT_POOL
    kinds: frozenset[ModelKind] = frozenset()
    max_loaded: int = 8
    memory_budget_bytes: Mapping[str, int] = field(default_factory=dict)
    eviction: Eviction = "lru"
    idle_timeout_s: float = 0.0  # 0: kept until evicted or unloaded
    capacity_wait_s: float = 0.0  # 0: a load that finds every slot in use is refused at once
    keys: PoolKeys = field(default_factory=PoolKeys)

    def __post_init__(self) -> None:
        if self.max_loaded < 1:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"{self.keys.max_loaded}: must be at least 1, got {self.max_loaded}"
            )
        if self.eviction not in ("lru", "lfu"):
            raise GenserveError(ErrorCode.INVALID_INPUT, f"eviction: {self.eviction!r} is not lru or lfu")
        if self.idle_timeout_s < 0 or self.capacity_wait_s < 0:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"pool {self.name}: idle timeout and capacity wait must be >= 0"
            )


class PoolTable:
    """Each kind's pool, and what the pool's rules choose for the manager (called with its lock held):
    which idle models of the pool make room, by count and by the device's budget."""

    def __init__(self, default: Pool, others: Sequence[Pool]) -> None:
        self.default = default
        self.of: dict[ModelKind, Pool] = {}
        for pool in others:
            for kind in pool.kinds:
                if kind in self.of:
                    raise GenserveError(
                        ErrorCode.INVALID_INPUT,
                        f"model kind {kind.value} is in two pools: {self.of[kind].name} and {pool.name}",
                    )
                self.of[kind] = pool
        for kind in ModelKind:
            self.of.setdefault(kind, default)
        self.budgets = {
            pool.name: {_budget_key(k): int(v) for k, v in pool.memory_budget_bytes.items()}
            for pool in {*self.of.values()}
        }

    @property
    def pools(self) -> list[Pool]:
        """Every pool, the default one first."""
        others = sorted({*self.of.values()} - {self.default}, key=lambda p: p.name)
        return [self.default, *others]

    def slots_of(self, pool: Pool, slots: Sequence[ModelSlot]) -> list[ModelSlot]:
        return [s for s in slots if self.of[s.entry.kind] is pool]

    def victims_for(
        self, slots: Sequence[ModelSlot], slot: ModelSlot, dev: str, needed: int
    ) -> list[ModelSlot]:
        """Models to evict so ``slot`` fits its pool by count and ``dev``'s budget; raises if it cannot."""
        pool = self.of[slot.entry.kind]
        budget = self.budgets[pool.name].get(dev)
        members, keys = self.slots_of(pool, slots), pool.keys
        return capacity.victims_for(
            members,
            slot,
            dev,
            needed,
            pool.max_loaded,
            budget,
            pool.eviction,
            keys.max_loaded,
            keys.memory_budget,
        )

    def room(
        self, slot: ModelSlot, dev: str, free: int | None, slots: Sequence[ModelSlot]
    ) -> tuple[int | None, int, int]:
        """(the bytes ``slot``'s pool may hold on ``dev``: its budget or what the device's free memory
        and the pool's own models there add up to, whichever is less, None when neither bounds it;
        the bytes its other models keep there; the largest of its offloaded models that come there
        in turn, the peak they add while in use)."""
        pool = self.of[slot.entry.kind]
        mine = [s for s in self.slots_of(pool, slots) if s is not slot]
        offloaded = [s.memory_bytes for s in mine if s.mode == "offloaded" and s.target == dev]
        held = sum(s.memory_bytes for s in mine if s.device == dev and s.mode != "offloaded")
        on_device = sum(s.memory_bytes for s in mine if s.device == dev)  # an offloaded one in use too
        usable = None if free is None else free + on_device
        bounds = [b for b in (self.budgets[pool.name].get(dev), usable) if b is not None]
        return (min(bounds) if bounds else None), held, max(offloaded, default=0)

    def over_budget(self, slots: Sequence[ModelSlot], slot: ModelSlot) -> list[ModelSlot]:
        """The disk size was only an estimate: idle models to evict if the real size overshoots."""
        pool = self.of[slot.entry.kind]
        budget = self.budgets[pool.name].get(slot.device or "")
        if budget is None:
            return []
        return capacity.over_budget(self.slots_of(pool, slots), slot, budget, pool.eviction)


def _budget_key(name: str) -> str:
    """Spelled like loaded models' devices, so a budget for ``cuda`` applies to ``cuda:0``."""
    try:
        return device_name(torch.device(name.strip().lower()))
    except RuntimeError:
        return name
