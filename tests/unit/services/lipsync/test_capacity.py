"""The lip-sync pool's refusals in the lip-sync server's terms: its settings and the spec's wording.

The waiting itself is the model manager's (tests/unit/models/test_manager_pools.py); here the
manager's refusals, as it raises them after the pool's wait, become the lip-sync answers.
"""

from __future__ import annotations

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.models.capacity import after_waiting
from genserve.models.pools import PoolKeys
from genserve.services.lipsync.capacity import refusal

GIB = 1024**3
KEYS = PoolKeys("lipsync.max_models", "lipsync.max_memory_gb", "lipsync.capacity_wait_s")


def slots_in_use(waited_s: float) -> GenserveError:
    """What the manager raises when every loaded lip-sync model stayed pinned through the wait."""
    refused = GenserveError(
        ErrorCode.RESOURCE_EXHAUSTED, "cannot load lipsync/m: lipsync.max_models=1 ...", max_loaded=1
    )
    return after_waiting(refused, waited_s, KEYS.capacity_wait) if waited_s else refused


def budget_in_use(needed: int, budget: int, waited_s: float) -> GenserveError:
    refused = GenserveError(
        ErrorCode.RESOURCE_EXHAUSTED,
        "cannot load lipsync/m on cpu: ...",
        device="cpu",
        needed_bytes=needed,
        available_bytes=0,
        budget_bytes=budget,
    )
    return after_waiting(refused, waited_s, KEYS.capacity_wait)


def test_a_slot_that_stays_busy_is_refused_naming_the_setting() -> None:
    error = refusal(slots_in_use(0.4), "m")
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED
    assert error.message == (
        "Model 'm' cannot be loaded: all lipsync.max_models=1 loaded models are in use and none became "
        "free within 0.4 s (lipsync.capacity_wait_s)"
    )
    assert error.details == {"field": "model_id", "setting": "lipsync.max_models"}


def test_no_wait_says_so() -> None:
    assert "within 0 s" in refusal(slots_in_use(0), "m").message


def test_the_memory_budget_names_its_setting() -> None:
    never = refusal(budget_in_use(2 * GIB, GIB, 60.0), "m")  # bigger than the whole budget
    assert "needs 2.00 GB, more than lipsync.max_memory_gb=1" in never.message
    held = refusal(budget_in_use(GIB // 2, GIB, 0.1), "m")
    assert "lipsync.max_memory_gb=1 on cpu is held by models in use" in held.message
    assert "within 0.1 s" in held.message and held.details["setting"] == "lipsync.max_memory_gb"


@pytest.mark.parametrize("waited", [0.0, 2.5])
def test_the_waited_time_comes_from_the_manager(waited: float) -> None:
    assert f"within {waited:g} s (lipsync.capacity_wait_s)" in refusal(slots_in_use(waited), "m").message
