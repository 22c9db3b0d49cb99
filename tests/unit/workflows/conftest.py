"""Toy node types for the workflow tests: numbers flow along links, one output node collects them.

Every node appends its node id to ``ctx.resources`` when that is a list, so a test sees exactly
which nodes ran (and that the runner hands ``resources`` through to nodes).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from genserve.workflows.events import WorkflowEvent
from genserve.workflows.inputs import Boolean, Combo, Float, Int, Linked, String
from genserve.workflows.nodes.base import NodeContext, NodeRegistry, NodeResult, NodeType
from genserve.workflows.runner import WorkflowRunner


def _log(ctx: NodeContext) -> None:
    if isinstance(ctx.resources, list):
        ctx.resources.append(ctx.node_id)


def _number(ctx: NodeContext, value: float) -> tuple[float]:
    _log(ctx)
    return (value,)


def _add(ctx: NodeContext, a: float, b: float) -> tuple[float]:
    _log(ctx)
    return (a + b,)


def _scale(
    ctx: NodeContext, x: float, factor: float, seed: int, mode: str, exact: bool = False
) -> tuple[float]:
    _log(ctx)
    value = x * factor if mode == "mul" else x / factor
    return (value + seed,)


def _slow_steps(ctx: NodeContext, x: float, steps: int, delay: float = 0.0) -> tuple[float]:
    _log(ctx)
    for step in range(1, steps + 1):
        ctx.check_cancelled()
        if delay:
            time.sleep(delay)
        ctx.progress(step, steps)
    return (x,)


def _fail(ctx: NodeContext, x: float) -> tuple[float]:
    _log(ctx)
    raise RuntimeError(f"boom at {x}")


def _collect(ctx: NodeContext, values: float, label: str = "", extra: float | None = None) -> NodeResult:
    _log(ctx)
    found = [values] if extra is None else [values, extra]
    return NodeResult((), ui={"values": found, "label": [label]})


_counter = itertools.count()


def _random(ctx: NodeContext) -> tuple[float]:
    _log(ctx)
    return (float(next(_counter)),)


def _pair(ctx: NodeContext, value: float) -> tuple[float, str]:
    _log(ctx)
    return (value, str(value))


def _text(ctx: NodeContext, text: str) -> tuple[str]:
    _log(ctx)
    return (text,)


NUMBER = NodeType(
    "Number", _number, required={"value": Float(0.0, min=-1000, max=1000)}, return_types=("NUMBER",)
)
ADD = NodeType(
    "Add",
    _add,
    required={"a": Linked("NUMBER"), "b": Linked("NUMBER")},
    return_types=("NUMBER",),
    category="math",
)
SCALE = NodeType(
    "Scale",
    _scale,
    required={
        "x": Linked("NUMBER"),
        "factor": Float(1.0, min=0.0, max=10.0, step=0.5),
        "seed": Int(0, min=0, max=2**32),
        "mode": Combo(["mul", "div"], default="mul"),
    },
    optional={"exact": Boolean(False)},
    return_types=("NUMBER",),
    return_names=("scaled",),
    display_name="Scale a number",
    description="x * factor + seed",
)
SLOW_STEPS = NodeType(
    "SlowSteps",
    _slow_steps,
    required={"x": Linked("NUMBER"), "steps": Int(3, min=1, max=100)},
    optional={"delay": Float(0.0, min=0.0)},
    return_types=("NUMBER",),
)
FAIL = NodeType("Fail", _fail, required={"x": Linked("NUMBER")}, return_types=("NUMBER",))
COLLECT = NodeType(
    "Collect",
    _collect,
    required={"values": Linked("NUMBER")},
    optional={"label": String("", multiline=True), "extra": Linked("NUMBER")},
    output_node=True,
)
RANDOM = NodeType("Random", _random, return_types=("NUMBER",), cacheable=False)
PAIR = NodeType("Pair", _pair, required={"value": Float(0.0)}, return_types=("NUMBER", "TEXT"))
TEXT = NodeType("Text", _text, required={"text": String("")}, return_types=("TEXT",))

ALL_TYPES = (NUMBER, ADD, SCALE, SLOW_STEPS, FAIL, COLLECT, RANDOM, PAIR, TEXT)


@pytest.fixture
def registry() -> NodeRegistry:
    return NodeRegistry(ALL_TYPES)


@pytest.fixture
def runner(registry: NodeRegistry) -> WorkflowRunner:
    return WorkflowRunner(registry, cache_size=32)


def chain(
    seed: int = 0, value: float = 2.0, ids: tuple[str, str, str, str] = ("1", "2", "3", "4")
) -> dict[str, Any]:
    """Number -> SlowSteps -> Scale(seed) -> Collect: the seed sits after the 'expensive' node."""
    n, slow, scale, out = ids
    return {
        n: {"class_type": "Number", "inputs": {"value": value}},
        slow: {"class_type": "SlowSteps", "inputs": {"x": [n, 0], "steps": 4}},
        scale: {
            "class_type": "Scale",
            "inputs": {"x": [slow, 0], "factor": 3, "seed": seed, "mode": "mul"},
            "_meta": {"title": "Scale it"},
        },
        out: {"class_type": "Collect", "inputs": {"values": [scale, 0], "label": "result"}},
    }


class Recorder:
    """An event sink that keeps every event, safe to call from the runner's thread."""

    def __init__(self, on_event: Callable[[WorkflowEvent], None] | None = None) -> None:
        self.events: list[WorkflowEvent] = []
        self._lock = threading.Lock()
        self._on_event = on_event

    def __call__(self, event: WorkflowEvent) -> None:
        with self._lock:
            self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)

    def types(self) -> list[str]:
        return [e.type.value for e in self.events]
