"""Model pools: the capacity rules one ModelManager applies to a group of model kinds.

Every kind belongs to one pool. A pool has its own count limit, memory budget per device,
eviction policy, idle timeout and capacity wait, so that the diffusion parts (few, large, kept
until evicted, a refusal at once when every slot is busy) and the lip-sync models (many small
ONNX models, a wait for a free slot, an idle life) are kept by one manager under different rules,
and one table accounts for every loaded model's memory on every device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind

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


def pool_table(default: Pool, others: tuple[Pool, ...]) -> dict[ModelKind, Pool]:
    """Each kind's pool; a kind named by two pools is a configuration error."""
    table: dict[ModelKind, Pool] = {}
    for pool in others:
        for kind in pool.kinds:
            if kind in table:
                raise GenserveError(
                    ErrorCode.INVALID_INPUT,
                    f"model kind {kind.value} is in two pools: {table[kind].name} and {pool.name}",
                )
            table[kind] = pool
    for kind in ModelKind:
        table.setdefault(kind, default)
    return table
