"""What a workflow run reports while it runs: ComfyUI's message vocabulary as plain dataclasses.

The runner knows nothing of sockets; a door subscribes with a callback and sends
``event.to_message()`` (ComfyUI's ``{"type": ..., "data": ...}`` WebSocket shape) or maps events to
its own protocol (the bridge's ``{"status": "progress", "details": "42%"}`` reads ``overall``).
The set of event types is closed: ``EventType`` lists all of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class EventType(StrEnum):
    EXECUTION_START = "execution_start"
    EXECUTION_CACHED = "execution_cached"
    EXECUTING = "executing"
    PROGRESS = "progress"
    EXECUTED = "executed"
    EXECUTION_SUCCESS = "execution_success"
    EXECUTION_ERROR = "execution_error"
    EXECUTION_INTERRUPTED = "execution_interrupted"


MAX_MESSAGE_CHARS = 500


def _now_ms() -> int:
    return int(time.time() * 1000)


def overall_percent(finished: int, total: int, step: int = 0, steps: int = 0) -> float:
    """Whole-run progress in percent: finished nodes over nodes to run, the running node's steps inside.

    This is how the original bridge computed its percentage; a sampler at step 10 of 20 in a run
    of 4 nodes, 2 of them done, is at (2 + 0.5) / 4 = 62.5 %. A run with nothing to execute (all
    cached) is complete.
    """
    if total <= 0:
        return 100.0
    inside = min(max(step / steps, 0.0), 1.0) if steps > 0 else 0.0
    return min(finished + inside, total) / total * 100.0


@dataclass(frozen=True)
class WorkflowEvent:
    """Base of every event: the run it belongs to and when it happened."""

    type: ClassVar[EventType]
    prompt_id: str

    def data(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id}

    def to_message(self) -> dict[str, Any]:
        """ComfyUI's WebSocket message for this event."""
        return {"type": self.type.value, "data": self.data()}


@dataclass(frozen=True)
class ExecutionStart(WorkflowEvent):
    type: ClassVar[EventType] = EventType.EXECUTION_START
    timestamp: int = field(default_factory=_now_ms)

    def data(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "timestamp": self.timestamp}


@dataclass(frozen=True)
class ExecutionCached(WorkflowEvent):
    """The nodes whose outputs came from the cache and will not run."""

    type: ClassVar[EventType] = EventType.EXECUTION_CACHED
    nodes: tuple[str, ...] = ()
    timestamp: int = field(default_factory=_now_ms)

    def data(self) -> dict[str, Any]:
        return {"nodes": list(self.nodes), "prompt_id": self.prompt_id, "timestamp": self.timestamp}


@dataclass(frozen=True)
class Executing(WorkflowEvent):
    """A node starts; ``node=None`` closes the run (sent last, after success, error or interruption)."""

    type: ClassVar[EventType] = EventType.EXECUTING
    node: str | None = None
    overall: float = 0.0

    def data(self) -> dict[str, Any]:
        return {"node": self.node, "display_node": self.node, "prompt_id": self.prompt_id}


@dataclass(frozen=True)
class Progress(WorkflowEvent):
    """A running node's own steps (``value`` of ``max``) and the whole run's ``overall`` percent."""

    type: ClassVar[EventType] = EventType.PROGRESS
    node: str = ""
    value: int = 0
    max: int = 0
    overall: float = 0.0

    def data(self) -> dict[str, Any]:
        return {"value": self.value, "max": self.max, "prompt_id": self.prompt_id, "node": self.node}


@dataclass(frozen=True)
class Executed(WorkflowEvent):
    """An output node finished (or was served from the cache); ``output`` is its UI data."""

    type: ClassVar[EventType] = EventType.EXECUTED
    node: str = ""
    output: dict[str, Any] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "display_node": self.node,
            "output": self.output,
            "prompt_id": self.prompt_id,
        }


@dataclass(frozen=True)
class ExecutionSuccess(WorkflowEvent):
    type: ClassVar[EventType] = EventType.EXECUTION_SUCCESS
    timestamp: int = field(default_factory=_now_ms)

    def data(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "timestamp": self.timestamp}


def one_line(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A failure's message as clients see it: its first line, at most ``limit`` characters."""
    first = message.strip().split("\n", 1)[0].strip()
    return first if len(first) <= limit else first[: limit - 3] + "..."


@dataclass(frozen=True)
class ExecutionError(WorkflowEvent):
    """A node raised: which node, what it raised, and which nodes had finished before it.

    ComfyUI's fields, but ``exception_message`` is one line and ``traceback`` is always empty:
    the event goes to clients (WebSocket, /history), and a traceback names server paths; the
    server's log has it.
    """

    type: ClassVar[EventType] = EventType.EXECUTION_ERROR
    node_id: str = ""
    node_type: str = ""
    exception_message: str = ""
    exception_type: str = ""
    executed: tuple[str, ...] = ()
    current_inputs: dict[str, Any] = field(default_factory=dict)
    timestamp: int = field(default_factory=_now_ms)

    def data(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "node_id": self.node_id,
            "node_type": self.node_type,
            "executed": list(self.executed),
            "exception_message": self.exception_message,
            "exception_type": self.exception_type,
            "traceback": [],
            "current_inputs": self.current_inputs,
            "current_outputs": {},
            "timestamp": self.timestamp,
        }


@dataclass(frozen=True)
class ExecutionInterrupted(WorkflowEvent):
    """The run was cancelled at or inside ``node_id``."""

    type: ClassVar[EventType] = EventType.EXECUTION_INTERRUPTED
    node_id: str | None = None
    node_type: str | None = None
    executed: tuple[str, ...] = ()
    timestamp: int = field(default_factory=_now_ms)

    def data(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "node_id": self.node_id,
            "node_type": self.node_type,
            "executed": list(self.executed),
            "timestamp": self.timestamp,
        }
