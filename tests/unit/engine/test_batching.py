"""DynamicBatcher: lone requests never wait, concurrent ones share a run, tickets steer the leader."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from genserve.engine.batching import BatchStats, DynamicBatcher

pytestmark = pytest.mark.timeout(30)

LONG_DELAY = 5.0  # a leader that waited this out would blow every timing bound below


class Recorder:
    """A batch run that remembers the batches it got and answers each item with item * 10."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self._lock = threading.Lock()

    def __call__(self, items: list[Any]) -> list[Any]:
        with self._lock:
            self.batches.append(list(items))
        return [item * 10 for item in items]


def run_together(
    batcher: DynamicBatcher, items: list[int], run_batch: Callable[[list[Any]], list[Any]], size: int = 1
) -> list[Any]:
    """One thread per item; every ticket is taken before any request runs. Returns results or errors."""
    ready = threading.Barrier(len(items), timeout=5)
    results: list[Any] = [None] * len(items)

    def request(i: int) -> None:
        with batcher.ticket("model") as ticket:
            ready.wait()
            try:
                results[i] = ticket.run(size, items[i], run_batch)
            except Exception as exc:
                results[i] = exc

    threads = [threading.Thread(target=request, args=(i,), daemon=True) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), "a request is still blocked"
    return results


def test_a_lone_request_never_waits_for_the_delay() -> None:
    batcher = DynamicBatcher(max_items=64, max_delay_s=LONG_DELAY)
    recorder = Recorder()
    started = time.monotonic()
    with batcher.ticket("model") as ticket:
        assert ticket.run(3, 7, recorder) == 70
    assert time.monotonic() - started < 1.0  # the delay is 5 s
    assert recorder.batches == [[7]]
    assert batcher.stats() == BatchStats(runs=1, requests=1, largest=3)


def test_concurrent_requests_merge_into_one_run_and_each_gets_its_slice() -> None:
    batcher = DynamicBatcher(max_items=64, max_delay_s=LONG_DELAY)
    recorder = Recorder()
    started = time.monotonic()
    results = run_together(batcher, [1, 2, 3, 4], recorder, size=2)
    assert time.monotonic() - started < 2.0  # the last arrival let the leader go, not the delay
    assert results == [10, 20, 30, 40]
    assert len(recorder.batches) == 1 and sorted(recorder.batches[0]) == [1, 2, 3, 4]
    assert batcher.stats() == BatchStats(runs=1, requests=4, largest=8)


def test_max_items_splits_batches() -> None:
    batcher = DynamicBatcher(max_items=4, max_delay_s=LONG_DELAY)
    recorder = Recorder()
    started = time.monotonic()
    results = run_together(batcher, [1, 2, 3], recorder, size=2)  # 2 + 2 fill a batch, 2 more overflow
    assert time.monotonic() - started < 2.0
    assert results == [10, 20, 30]
    assert sorted(len(b) for b in recorder.batches) == [1, 2]
    assert sorted(x for b in recorder.batches for x in b) == [1, 2, 3]
    assert batcher.stats() == BatchStats(runs=2, requests=3, largest=4)


def test_disabled_batcher_runs_each_request_alone() -> None:
    batcher = DynamicBatcher(max_items=64, max_delay_s=LONG_DELAY, enabled=False)
    recorder = Recorder()
    started = time.monotonic()
    results = run_together(batcher, [1, 2, 3], recorder, size=2)
    assert time.monotonic() - started < 2.0
    assert results == [10, 20, 30]
    assert sorted(recorder.batches) == [[1], [2], [3]]
    assert batcher.stats() == BatchStats(runs=3, requests=3, largest=2)


def test_different_keys_never_share_a_run() -> None:
    batcher = DynamicBatcher(max_items=64, max_delay_s=LONG_DELAY)
    recorder = Recorder()
    ready = threading.Barrier(2, timeout=5)
    results: dict[str, Any] = {}

    def request(key: str, item: int) -> None:
        with batcher.ticket(key) as ticket:
            ready.wait()
            results[key] = ticket.run(1, item, recorder)

    threads = [threading.Thread(target=request, args=a) for a in (("a", 1), ("b", 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {"a": 10, "b": 20}
    assert sorted(recorder.batches) == [[1], [2]]


def test_an_exception_in_the_run_reaches_every_caller_of_the_batch() -> None:
    batcher = DynamicBatcher(max_items=64, max_delay_s=LONG_DELAY)
    calls: list[list[int]] = []

    def broken(items: list[Any]) -> list[Any]:
        calls.append(list(items))
        raise ValueError("onnx exploded")

    results = run_together(batcher, [1, 2, 3], broken)
    assert len(calls) == 1
    assert all(isinstance(r, ValueError) and str(r) == "onnx exploded" for r in results)
    assert batcher.stats() == BatchStats(runs=1, requests=3, largest=3)

    # A run that answers the wrong number of items fails the whole batch too.
    results = run_together(batcher, [1, 2], lambda items: [0])
    assert all(isinstance(r, RuntimeError) and "1 results for 2 items" in str(r) for r in results)


def test_a_ticket_can_be_spent_once() -> None:
    batcher = DynamicBatcher(max_items=8, max_delay_s=0.0)
    recorder = Recorder()
    with batcher.ticket("model") as ticket:
        assert ticket.run(1, 1, recorder) == 10
        assert ticket.spent
        with pytest.raises(RuntimeError, match="used once"):
            ticket.run(1, 2, recorder)
    assert recorder.batches == [[1]]
    assert batcher.stats().runs == 1


def test_a_ticket_given_back_unspent_lets_the_waiting_leader_go() -> None:
    batcher = DynamicBatcher(max_items=64, max_delay_s=LONG_DELAY)
    recorder = Recorder()
    holding, give_back = threading.Event(), threading.Event()

    def slow_request() -> None:
        with batcher.ticket("model"):
            holding.set()
            give_back.wait(10)  # fails in pre-processing: leaves without running

    other = threading.Thread(target=slow_request, daemon=True)
    other.start()
    assert holding.wait(5)
    result: list[Any] = []
    leader_started = time.monotonic()

    def leader() -> None:
        with batcher.ticket("model") as ticket:
            result.append(ticket.run(1, 5, recorder))

    lead = threading.Thread(target=leader, daemon=True)
    lead.start()
    time.sleep(0.3)
    assert lead.is_alive() and result == []  # it waits for the request still on its way
    give_back.set()
    lead.join(5)
    other.join(5)
    assert not lead.is_alive()
    assert time.monotonic() - leader_started < 2.0  # well under the 5 s delay
    assert result == [50]
    assert batcher.stats() == BatchStats(runs=1, requests=1, largest=1)


def test_a_waiting_leader_goes_after_max_delay() -> None:
    batcher = DynamicBatcher(max_items=64, max_delay_s=0.2)
    recorder = Recorder()
    leave = threading.Event()

    def straggler() -> None:
        with batcher.ticket("model"):
            leave.wait(10)

    other = threading.Thread(target=straggler, daemon=True)
    other.start()
    try:
        started = time.monotonic()
        with batcher.ticket("model") as ticket:
            assert ticket.run(1, 4, recorder) == 40
        assert 0.15 <= time.monotonic() - started < 2.0
    finally:
        leave.set()
        other.join(5)


class Costed:
    """A batch run that takes ``fixed + per_item * size`` seconds; items are their own sizes."""

    def __init__(self, fixed: float, per_item: float) -> None:
        self.fixed, self.per_item = fixed, per_item

    def __call__(self, items: list[Any]) -> list[Any]:
        time.sleep(self.fixed + self.per_item * sum(items))
        return [item * 10 for item in items]


def history(batcher: DynamicBatcher, run_batch: Costed, sizes: list[int]) -> None:
    """Lone runs of these sizes, one after the other (a lone request never waits)."""
    for size in sizes:
        with batcher.ticket("model") as ticket:
            assert ticket.run(size, size, run_batch) == size * 10


def lead_beside_a_straggler(batcher: DynamicBatcher, run_batch: Costed) -> float:
    """Seconds a lone leader takes while another request holds its ticket and never comes."""
    holding, leave = threading.Event(), threading.Event()

    def straggler() -> None:
        with batcher.ticket("model"):
            holding.set()
            leave.wait(10)

    other = threading.Thread(target=straggler, daemon=True)
    other.start()
    try:
        assert holding.wait(5)
        started = time.monotonic()
        with batcher.ticket("model") as ticket:
            assert ticket.run(1, 1, run_batch) == 10
        return time.monotonic() - started
    finally:
        leave.set()
        other.join(5)


def test_the_fixed_cost_is_unknown_until_runs_of_two_sizes() -> None:
    batcher = DynamicBatcher(max_items=64, max_delay_s=LONG_DELAY)
    run_batch = Costed(0.05, 0.0)
    history(batcher, run_batch, [2, 2])
    assert batcher.fixed_cost_s("model") is None  # one size: cost per run and per item are one
    history(batcher, run_batch, [4])
    fixed = batcher.fixed_cost_s("model")
    assert fixed is not None and 0.04 <= fixed < 0.2
    assert batcher.fixed_cost_s("other model") is None


def test_a_model_whose_cost_is_all_per_item_does_not_make_a_leader_wait() -> None:
    """Merging saves nothing there, so a leader does not wait out the delay for a late request."""
    batcher = DynamicBatcher(max_items=64, max_delay_s=LONG_DELAY)
    run_batch = Costed(0.0, 0.02)
    history(batcher, run_batch, [1, 2, 4, 8])
    fixed = batcher.fixed_cost_s("model")
    assert fixed is not None and fixed < 0.03  # 0 but for sleep's overshoot
    spent = lead_beside_a_straggler(batcher, run_batch)
    assert spent < 0.5  # its own run is 20 ms; the delay is 5 s


def test_a_model_with_a_fixed_cost_makes_a_leader_wait_about_that_long() -> None:
    batcher = DynamicBatcher(max_items=64, max_delay_s=LONG_DELAY)
    run_batch = Costed(0.3, 0.001)
    history(batcher, run_batch, [1, 2, 4])
    fixed = batcher.fixed_cost_s("model")
    assert fixed is not None and 0.25 <= fixed < 0.5
    spent = lead_beside_a_straggler(batcher, run_batch)
    assert 0.25 + 0.3 <= spent < 2.0  # the wait (the fixed cost, not the 5 s delay), then its run


@pytest.mark.parametrize(("max_items", "delay"), [(0, 0.1), (4, -1.0)])
def test_bad_settings_are_refused(max_items: int, delay: float) -> None:
    with pytest.raises(ValueError, match="max_items"):
        DynamicBatcher(max_items, delay)
