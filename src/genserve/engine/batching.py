"""Dynamic batching: concurrent requests for one model share one model run.

Leader and followers, no extra thread: the first request to reach the batcher for a key opens a
batch and leads it; requests arriving while it is open join as followers. The leader runs the
merged batch on its own worker thread and hands each follower its slice.

A leader waits only when waiting can pay, and never past ``max_delay_s`` or a full batch:
- while requests for its key are on their way: each request takes a ticket when it starts
  (before its own pre-processing), so the leader knows how many are still coming. Each one that
  joins saves a run's fixed cost, so the leader waits for them no longer than that cost: the
  intercept of a line fitted to the key's recent (size, run time) pairs (ski rental: a wait
  never costs more than the run it may save). A model whose run time grows with its size alone
  (inference cheap beside the copies, or cores already shared by concurrent runs) gets almost no
  wait; one that costs about the same at any size (a GPU at small batches) gets up to
  ``max_delay_s``. Until the key has runs of at least two sizes the cost is unknown and the
  bound is ``max_delay_s``.
- while a run for its key is in progress: the model is busy anyway (a GPU runs them one after
  the other; on a CPU they would share the cores), so requests that arrive meanwhile gather
  into one run instead of queueing behind each other.
A request alone on a key with an idle model therefore never waits at all.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from genserve.services.base import BatchItem, RunContext, Service

TIMING_WINDOW = 32  # runs per key the fixed-cost fit looks at: recent enough to follow a model swap


@dataclass(eq=False)
class _Batch:
    items: list[Any] = field(default_factory=list)
    size: int = 0
    closed: bool = False
    results: list[Any] | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class BatchStats:
    runs: int  # model runs made
    requests: int  # requests served by them
    largest: int  # most items (frames) in one run


class Ticket:
    """One request's place in line for a key; spent by ``run``, or given back on exit."""

    def __init__(self, batcher: DynamicBatcher, key: Hashable) -> None:
        self._batcher = batcher
        self.key = key
        self.spent = False

    def run(self, size: int, item: Any, run_batch: Callable[[list[Any]], list[Any]]) -> Any:
        """Run ``item`` (``size`` units, e.g. frames) in a merged batch; returns its own result.

        ``run_batch`` gets the items of the batch in order and returns one result per item. If it
        raises, every request of the batch gets that exception.
        """
        return self._batcher._run(self, size, item, run_batch)


class DynamicBatcher:
    def __init__(self, max_items: int, max_delay_s: float, *, enabled: bool = True) -> None:
        if max_items < 1 or max_delay_s < 0:
            raise ValueError(f"max_items must be >= 1 and max_delay_s >= 0, got {max_items}, {max_delay_s}")
        self.max_items = max_items
        self.max_delay_s = max_delay_s
        self.enabled = enabled
        self._cond = threading.Condition(threading.Lock())
        self._pending: Counter[Hashable] = Counter()  # tickets taken, not yet spent
        self._running: Counter[Hashable] = Counter()  # batch runs in progress
        self._open: dict[Hashable, _Batch] = {}
        self._timings: dict[Hashable, deque[tuple[int, float]]] = {}  # recent (size, seconds) per key
        self._runs = self._requests = self._largest = 0

    @contextmanager
    def ticket(self, key: Hashable) -> Iterator[Ticket]:
        """Taken when a request starts, so leaders for ``key`` know it is coming."""
        ticket = Ticket(self, key)
        with self._cond:
            self._pending[key] += 1
        try:
            yield ticket
        finally:
            if not ticket.spent:
                with self._cond:
                    self._spend(ticket)

    def stats(self) -> BatchStats:
        with self._cond:
            return BatchStats(self._runs, self._requests, self._largest)

    def fixed_cost_s(self, key: Hashable) -> float | None:
        """A run's cost for ``key`` that does not grow with its size; None until it can be told."""
        with self._cond:
            return self._fixed_cost(key)

    def _fixed_cost(self, key: Hashable) -> float | None:
        timings = self._timings.get(key)
        if not timings or len({size for size, _ in timings}) < 2:
            return None
        sizes = [float(size) for size, _ in timings]
        seconds = [spent for _, spent in timings]
        mean_size, mean_time = sum(sizes) / len(sizes), sum(seconds) / len(seconds)
        spread = sum((x - mean_size) ** 2 for x in sizes)
        slope = sum((x - mean_size) * (y - mean_time) for x, y in zip(sizes, seconds, strict=True)) / spread
        return max(mean_time - slope * mean_size, 0.0)

    def _spend(self, ticket: Ticket) -> None:
        ticket.spent = True
        self._pending[ticket.key] -= 1
        if self._pending[ticket.key] <= 0:
            del self._pending[ticket.key]
        self._cond.notify_all()

    def _run(self, ticket: Ticket, size: int, item: Any, run_batch: Callable[[list[Any]], list[Any]]) -> Any:
        if ticket.spent:
            raise RuntimeError("a batching ticket can be used once")
        key = ticket.key
        with self._cond:
            self._spend(ticket)
            if not self.enabled:
                batch, index, leader = _Batch([item], size, closed=True), 0, True
            else:
                batch = self._open.get(key)
                if batch is not None and not batch.closed and batch.size + size <= self.max_items:
                    index, leader = len(batch.items), False
                    batch.items.append(item)
                    batch.size += size
                else:
                    if batch is not None:
                        batch.closed = True  # full: its leader goes now, this request leads the next
                    batch, index, leader = _Batch([item], size), 0, True
                    self._open[key] = batch
            if leader and not batch.closed:
                now = time.monotonic()
                busy_deadline = now + self.max_delay_s
                fixed = self._fixed_cost(key)
                coming_deadline = now + (self.max_delay_s if fixed is None else min(fixed, self.max_delay_s))
                while batch.size < self.max_items and (self._pending[key] > 0 or self._running[key] > 0):
                    deadline = busy_deadline if self._running[key] > 0 else coming_deadline
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or batch.closed:
                        break
                    self._cond.wait(remaining)
                batch.closed = True
                if self._open.get(key) is batch:
                    del self._open[key]
            if leader:
                self._running[key] += 1
        if leader:
            self._lead(key, batch, run_batch)
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        assert batch.results is not None
        return batch.results[index]

    def _lead(self, key: Hashable, batch: _Batch, run_batch: Callable[[list[Any]], list[Any]]) -> None:
        started, spent = time.perf_counter(), None
        try:
            results = run_batch(batch.items)
            spent = time.perf_counter() - started
            if len(results) != len(batch.items):
                raise RuntimeError(f"batch run returned {len(results)} results for {len(batch.items)} items")
            batch.results = results
        except BaseException as exc:
            batch.error = exc
        finally:
            with self._cond:
                self._running[key] -= 1
                if self._running[key] <= 0:
                    del self._running[key]
                self._cond.notify_all()  # leaders waiting for the model to be free go now
                if spent is not None:  # a failed run's time says nothing of the model's cost
                    self._timings.setdefault(key, deque(maxlen=TIMING_WINDOW)).append((batch.size, spent))
                self._runs += 1
                self._requests += len(batch.items)
                self._largest = max(self._largest, batch.size)
            batch.done.set()


def run_batched(
    service: Service[Any, Any], request: BaseModel, ctx: RunContext, batcher: DynamicBatcher | None
) -> Any:
    """Run a service that declares ``Batching``: the engine's side of the generator protocol.

    The ticket is taken before the service starts preparing, so a leader for the same key knows
    this request is on its way; the service's BatchItem then joins a merged run (or runs alone
    without a batcher, or when the item says merging cannot pay), and the service gets its own
    output back to finish with. However the run ends, the service's generator is closed, so the
    model it pinned is let go.
    """
    assert service.batching is not None
    declared = service.batching
    scope = batcher.ticket(declared.key(request)) if batcher is not None else nullcontext(None)
    with scope as ticket:
        steps = service.run(request, ctx)
        try:
            try:
                item = next(steps)
            except StopIteration as done:  # answered without a model run
                return done.value
            if not isinstance(item, BatchItem):
                raise TypeError(f"service {service.name} yielded {type(item).__name__}, not BatchItem")
            if ticket is not None and item.merge:
                output = ticket.run(item.size, item.payload, declared.run_batch)
            else:
                output = declared.run_batch([item.payload])[0]
            try:
                steps.send(output)
            except StopIteration as done:
                return done.value
            raise RuntimeError(f"service {service.name} yielded more than once")
        finally:
            steps.close()
