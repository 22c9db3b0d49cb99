"""Which loaded models make room: the manager's capacity rules as functions over its slots.

Called with the manager's lock held; they only choose (or refuse with the reason), the manager
evicts. Idle models go first by policy: ``lru`` (least recently used) or ``lfu`` (fewest
requests, then least recent).
"""

from __future__ import annotations

import logging

from genserve.errors import ErrorCode, GenserveError
from genserve.models.slots import ModelSlot, SlotState

log = logging.getLogger("genserve.models.manager")


def evictable(slots: list[ModelSlot], exclude: ModelSlot, policy: str) -> list[ModelSlot]:
    """Idle models (loaded, not pinned), the first to go first."""
    idle = [s for s in slots if s.state is SlotState.LOADED and not s.pins and s is not exclude]
    if policy == "lfu":
        return sorted(idle, key=lambda s: (s.request_count, s.touched))
    return sorted(idle, key=lambda s: s.touched)


def victims_for(
    slots: list[ModelSlot],
    slot: ModelSlot,
    dev: str,
    needed: int,
    max_loaded: int,
    budget: int | None,
    policy: str,
    count_key: str = "models.max_loaded",
    budget_key: str = "models.memory_budget_mb",
) -> list[ModelSlot]:
    """Models to evict so ``slot`` fits by count and by ``dev``'s budget; raises if it cannot fit.

    ``slots`` are the pool's; the keys name its settings in the refusal.
    """
    active = [s for s in slots if s is not slot and s.state is not SlotState.UNLOADED]
    candidates = evictable(slots, slot, policy)
    excess = len(active) + 1 - max_loaded
    if excess > len(candidates):
        raise GenserveError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"cannot load {slot.label}: {count_key}={max_loaded} models are loaded and "
            f"{len(active) - len(candidates)} of them are in use or loading",
            max_loaded=max_loaded,
        )
    chosen = candidates[: max(excess, 0)]
    if budget is None:
        return chosen
    used = sum(s.memory_bytes for s in active if s.device == dev and s not in chosen)
    for s in candidates:
        if used + needed <= budget or needed > budget:
            break
        if s.device == dev and s not in chosen:
            chosen.append(s)
            used -= s.memory_bytes
    if used + needed > budget:
        why = "more than the whole budget" if needed > budget else "the rest is held by models in use"
        available = max(budget - used, 0)
        raise GenserveError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"cannot load {slot.label} on {dev}: needs {needed} bytes, {available} of the "
            f"{budget}-byte budget ({budget_key}) can be made free ({why})",
            device=dev,
            needed_bytes=needed,
            available_bytes=available,
            budget_bytes=budget,
        )
    return chosen


def over_budget(slots: list[ModelSlot], slot: ModelSlot, budget: int, policy: str) -> list[ModelSlot]:
    """Idle models to evict when a model measured bigger than its estimate (best effort)."""
    used = sum(s.memory_bytes for s in slots if s.device == slot.device)  # unloaded: device None
    victims = []
    for s in evictable(slots, slot, policy):
        if used <= budget:
            break
        if s.device == slot.device:
            used -= s.memory_bytes
            victims.append(s)
    if used > budget:
        log.warning("%s over budget (%d of %d bytes) with models in use", slot.device, used, budget)
    return victims


def is_refusal(exc: GenserveError) -> bool:
    """A refusal for want of room carries the limit it hit; a full queue or a missing file does not."""
    return exc.code is ErrorCode.RESOURCE_EXHAUSTED and (
        "max_loaded" in exc.details or "budget_bytes" in exc.details
    )


def never_fits(exc: GenserveError) -> bool:
    """A model bigger than the whole memory budget: waiting for others to finish cannot help."""
    needed, budget = exc.details.get("needed_bytes"), exc.details.get("budget_bytes")
    return needed is not None and budget is not None and needed > budget


def after_waiting(exc: GenserveError, waited_s: float, wait_key: str) -> GenserveError:
    """The refusal once a pool's capacity wait is over: what it waited for, and for how long."""
    if never_fits(exc):
        return exc
    return GenserveError(
        exc.code,
        f"{exc.message}; none became free within {waited_s:g} s ({wait_key})",
        **{**exc.details, "waited_s": waited_s},
    )
