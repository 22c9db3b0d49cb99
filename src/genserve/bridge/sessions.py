"""What each client hears: the bridge's ``{"status", "details"}`` messages, live and last-known.

WebSocket clients subscribe and get every message as it happens; REST clients poll
``/execution-info`` and get the last one. Both read the same record, so the two ways of following a
job never disagree. Everything here runs on the event loop (the queue worker publishes from its
tasks), so no locks are needed; each subscriber has its own bounded queue, and a subscriber too slow
to keep up loses stale progress messages rather than holding memory without bound (the latest
state is what matters).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """The spec's statuses: its WebSocket table and its execution-info table."""

    CONNECTED = "connected"
    LISTENING = "listening"
    PROGRESS = "progress"
    CLOSED = "closed"
    ERROR = "error"


@dataclass(frozen=True)
class Update:
    status: Status
    details: str

    @property
    def final(self) -> bool:
        """A job's last word: the socket closes after it."""
        return self.status in (Status.CLOSED, Status.ERROR)

    def message(self) -> dict[str, str]:
        return {"status": self.status.value, "details": self.details}


CONNECTED = Update(Status.CONNECTED, "server connected")
LISTENING = Update(Status.LISTENING, "server is listening")
DONE = Update(Status.CLOSED, "Execution is done")


class Sessions:
    """Per-client last update and live subscribers."""

    def __init__(self, max_pending: int = 256) -> None:
        self.max_pending = max_pending
        self._last: dict[str, Update] = {}
        self._subscribers: dict[str, list[asyncio.Queue[Update]]] = {}

    def publish(self, client_id: str, update: Update) -> None:
        self._last[client_id] = update
        for queue in self._subscribers.get(client_id, ()):
            if queue.full():  # drop the oldest, never the final word
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(update)

    def last(self, client_id: str) -> Update | None:
        return self._last.get(client_id)

    def forget(self, client_id: str) -> None:
        """Drop the last update of a client nobody follows any more (called by the bridge when its
        last socket closes or its job ends with none open), so ``_last`` does not grow forever."""
        self._last.pop(client_id, None)

    def remembered(self) -> int:
        """How many clients have a last update kept (for tests and metrics)."""
        return len(self._last)

    @contextlib.contextmanager
    def subscribe(self, client_id: str) -> Iterator[asyncio.Queue[Update]]:
        queue: asyncio.Queue[Update] = asyncio.Queue(self.max_pending)
        self._subscribers.setdefault(client_id, []).append(queue)
        try:
            yield queue
        finally:
            found = self._subscribers.get(client_id, [])
            if queue in found:
                found.remove(queue)
            if not found:
                self._subscribers.pop(client_id, None)

    def subscribed(self, client_id: str) -> bool:
        """Whether any socket of this client is open: a reconnecting client's old socket closing
        must not cancel the job its new socket follows."""
        return bool(self._subscribers.get(client_id))

    def clients(self) -> list[str]:
        """The clients with at least one open socket."""
        return list(self._subscribers)
