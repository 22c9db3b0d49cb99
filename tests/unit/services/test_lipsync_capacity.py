"""CapacityWaiter: lip-sync requests wait for a lipsync.max_models slot instead of failing at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.services import lipsync_capacity
from genserve.services.lipsync_capacity import CapacityWaiter, no_wait

GIB = 1024**3


def slots_in_use() -> GenserveError:
    """What the shared manager raises when every loaded model is pinned."""
    return GenserveError(
        ErrorCode.RESOURCE_EXHAUSTED, "cannot load lipsync/m: max_loaded=1 ...", max_loaded=1
    )


def budget_in_use(needed: int, budget: int) -> GenserveError:
    return GenserveError(
        ErrorCode.RESOURCE_EXHAUSTED,
        "cannot load lipsync/m on cpu: ...",
        device="cpu",
        needed_bytes=needed,
        available_bytes=0,
        budget_bytes=budget,
    )


def failing(
    error: GenserveError, until: threading.Event | None = None
) -> tuple[Callable[[], str], list[int]]:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if until is None or not until.is_set():
            raise error
        return "model"

    return attempt, calls


def test_a_release_wakes_the_waiting_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lipsync_capacity, "RECHECK_S", 30.0)  # only the release can wake it in time
    waiter, free = CapacityWaiter(30.0), threading.Event()
    attempt, calls = failing(slots_in_use(), free)

    def release_later() -> None:
        time.sleep(0.2)
        free.set()
        waiter.released()

    threading.Thread(target=release_later, daemon=True).start()
    started = time.monotonic()
    assert waiter.retry(attempt, "m") == "model"
    assert 0.15 < time.monotonic() - started < 5 and len(calls) == 2


def test_a_slot_that_stays_busy_is_refused_naming_the_setting() -> None:
    attempt, calls = failing(slots_in_use())
    started = time.monotonic()
    with pytest.raises(GenserveError) as info:
        CapacityWaiter(0.4).retry(attempt, "m")
    assert time.monotonic() - started >= 0.4 and len(calls) >= 2  # re-checked without a release
    assert info.value.message == (
        "Model 'm' cannot be loaded: all lipsync.max_models=1 loaded models are in use and none became "
        "free within 0.4 s (lipsync.capacity_wait_s)"
    )
    assert info.value.details == {"field": "model_id", "setting": "lipsync.max_models"}


def test_no_wait_refuses_at_once_and_a_shorter_deadline_wins() -> None:
    attempt, calls = failing(slots_in_use())
    with pytest.raises(GenserveError, match="within 0 s"):
        no_wait().retry(attempt, "m")
    assert len(calls) == 1
    started = time.monotonic()
    with pytest.raises(GenserveError, match=r"within 0\.2 s"):
        CapacityWaiter(60.0).retry(attempt, "m", wait_s=0.2)
    assert time.monotonic() - started < 5


def test_the_memory_budget_names_its_setting() -> None:
    attempt, calls = failing(budget_in_use(2 * GIB, GIB))
    with pytest.raises(GenserveError) as info:
        CapacityWaiter(60.0).retry(attempt, "m")
    assert len(calls) == 1  # bigger than the whole budget: waiting cannot help
    assert "needs 2.00 GB, more than lipsync.max_memory_gb=1" in info.value.message
    attempt, _ = failing(budget_in_use(GIB // 2, GIB))
    with pytest.raises(GenserveError) as info:
        CapacityWaiter(0.1).retry(attempt, "m")
    assert "lipsync.max_memory_gb=1 on cpu is held by models in use" in info.value.message


@pytest.mark.parametrize(
    "error",
    [
        GenserveError(ErrorCode.RESOURCE_EXHAUSTED, "queue for lipsync is full (3 waiting)", queue_size=3),
        GenserveError(ErrorCode.INVALID_INPUT, "device: ..."),
    ],
)
def test_other_errors_pass_through_unchanged(error: GenserveError) -> None:
    attempt, calls = failing(error)
    with pytest.raises(GenserveError) as info:
        CapacityWaiter(60.0).retry(attempt, "m")
    assert info.value is error and len(calls) == 1


def test_a_cancelled_request_stops_waiting() -> None:
    attempt, _ = failing(slots_in_use())

    def cancelled() -> None:
        raise GenserveError(ErrorCode.CANCELLED, "request r was cancelled")

    started = time.monotonic()
    with pytest.raises(GenserveError) as info:
        CapacityWaiter(60.0).retry(attempt, "m", cancelled)
    assert info.value.code is ErrorCode.CANCELLED and time.monotonic() - started < 5
