"""What a load will take and how it will sit: the manager asks before it makes room, so the room it
makes is for the model as it will be (fp8 kept or not, resident or not). The rules are in
memory.py; this holds the manager's settings for them and reads its pools' room."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import torch

from genserve.models.formats.sizes import loaded_bytes
from genserve.models.kinds import ModelKind
from genserve.models.memory import HOST, MemoryMode, check_forced, choose, fits, fp8_size, free_bytes
from genserve.models.pools import PoolTable
from genserve.models.slots import ModelSlot


class Placement:
    def __init__(
        self,
        pools: PoolTable,
        slots: Callable[[], list[ModelSlot]],
        lock: threading.Condition,
        modes: Mapping[ModelKind, MemoryMode],
        fp8_storage: str,
    ) -> None:
        """``slots`` lists the manager's slots (its lock held); ``modes`` forces kinds' memory
        modes (checked now, so a bad one stops start-up); ``fp8_storage`` is on, off or auto."""
        check_forced(dict(modes))
        self._pools, self._slots, self._lock = pools, slots, lock
        self._modes, self._fp8 = dict(modes), fp8_storage

    def estimate(
        self, slot: ModelSlot, dev: str, target: torch.device, dtype: torch.dtype
    ) -> tuple[int, bool]:
        """(the bytes a load takes, whether it keeps fp8); headers are read without the lock."""

        def resident(size: int) -> bool:
            with self._lock:
                return fits(size, *self._room(slot, dev, target))

        small = fp8_size(self._fp8, slot.entry, dtype, resident)
        return (loaded_bytes(slot.entry, dtype), False) if small is None else (small, True)

    def mode(self, slot: ModelSlot, dev: str, target: torch.device, size: int) -> MemoryMode:
        """The pool's room on ``dev`` (its budget, the device's free memory) decides; lock held."""
        forced = self._modes.get(slot.entry.kind, MemoryMode.AUTO)
        return choose(slot.entry.kind, forced, size, *self._room(slot, dev, target), on_host=target == HOST)

    def _room(self, slot: ModelSlot, dev: str, target: torch.device) -> tuple[int | None, int, int]:
        return self._pools.room(slot, dev, free_bytes(target), self._slots())
