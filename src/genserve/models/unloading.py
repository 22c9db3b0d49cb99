"""Unloading one model: new users wait, current users finish (up to a timeout), then it goes.

The model's load lock is held throughout, so a reload never overlaps the old copy, and its memory
is freed before that lock opens. A thread may not unload a model from inside its own ``use()``
block (it would wait for itself). Past the timeout the model stays loaded and usable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.base import LoadedModel
from genserve.models.slots import ModelSlot, SlotState, release
from genserve.models.waiting import RoomWaiter


def unload_slot(
    slot: ModelSlot,
    timeout: float | None,
    cond: threading.Condition,
    evict: Callable[[ModelSlot], LoadedModel],
    room: RoomWaiter,
) -> bool:
    """False when the model is not loaded; ``cond`` is the manager's lock, ``evict`` takes the
    model out of its table (lock held)."""
    owner = threading.get_ident()
    deadline = None if timeout is None else time.monotonic() + timeout
    if not slot.load_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
        raise GenserveError(ErrorCode.TIMEOUT, f"unload {slot.label}: still loading after {timeout} s")
    try:
        with cond:
            if slot.state is not SlotState.LOADED:
                return False
            if owner in slot.pins:
                raise GenserveError(
                    ErrorCode.INVALID_INPUT, f"cannot unload {slot.label} from inside its own use() block"
                )
            slot.state = SlotState.UNLOADING
            _wait_for_users(slot, cond, deadline, timeout)
            loaded = evict(slot)
            room.released()
        release(loaded)
        return True
    finally:
        slot.load_lock.release()


def _wait_for_users(
    slot: ModelSlot, cond: threading.Condition, deadline: float | None, timeout: float | None
) -> None:
    while slot.pins:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            slot.state = SlotState.LOADED
            cond.notify_all()
            raise GenserveError(
                ErrorCode.TIMEOUT,
                f"unload {slot.label}: still in use by {sum(slot.pins.values())} request(s) "
                f"after {timeout} s; it stays loaded",
            )
        cond.wait(remaining)
