"""Flow control for the Kafka door: how much work a worker holds, and which offsets may be committed.

Two rules make delivery at-least-once without stalls or loss:

- **Bounded in-flight work.** A worker takes at most ``kafka.max_in_flight`` messages at once,
  over all its services. When the budget is spent its consumers pause their partitions (the client
  stops fetching) instead of buffering records without limit, and resume when a slot frees.
- **Commit the answered prefix only.** Messages of one partition run concurrently and finish in any
  order, but a Kafka offset commit says "everything before this is done". So the committable offset
  of a partition is its lowest still-unanswered offset (or one past the highest taken, when all are
  answered). A worker that dies leaves every unanswered message, and any after it, to the next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from aiokafka import TopicPartition


class InFlightLimit:
    """A counter of messages a worker holds, shared by its consumers (all on one event loop)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.used = 0
        self._freed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.size - self.used

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` slots at once; returns how many were taken (maybe 0)."""
        taken = max(0, min(wanted, self.free))
        self.used += taken
        return taken

    def release(self) -> None:
        self.used -= 1
        self._freed.set()

    async def wait_free(self, timeout: float) -> None:
        """Return once a slot is free, or after ``timeout`` seconds."""
        if self.free > 0:
            return
        self._freed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._freed.wait(), timeout)


class PartitionProgress:
    """Offsets taken and answered per partition, within one assignment (a *generation*).

    A rebalance starts a new generation: work from the old one may still finish (its answer is sent)
    but no longer moves offsets, since the partition may now belong to another worker.
    """

    def __init__(self) -> None:
        self.generation = 0
        self._pending: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def new_generation(self) -> int:
        self.generation += 1
        self._pending.clear()
        self._next.clear()
        self._committed.clear()
        return self.generation

    def taken(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def answered(self, tp: TopicPartition, offset: int, generation: int) -> None:
        if generation == self.generation and tp in self._pending:
            self._pending[tp].discard(offset)

    def unanswered(self, partitions: Iterable[TopicPartition] | None = None) -> int:
        chosen = (
            self._pending if partitions is None else {tp: self._pending.get(tp, set()) for tp in partitions}
        )
        return sum(len(offsets) for offsets in chosen.values())

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit now, where it moved past the last commit."""
        ready: dict[TopicPartition, int] = {}
        for tp, upper in self._next.items():
            pending = self._pending.get(tp)
            offset = min(pending) if pending else upper
            if offset > self._committed.get(tp, -1):
                ready[tp] = offset
        return ready

    def committed(self, offsets: dict[TopicPartition, int], generation: int) -> None:
        if generation != self.generation:
            return
        for tp, offset in offsets.items():
            self._committed[tp] = max(offset, self._committed.get(tp, -1))
