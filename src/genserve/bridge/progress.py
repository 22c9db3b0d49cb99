"""Whole-job progress from ComfyUI's WebSocket messages, whatever backend sent them.

The bridge promises one percentage per job. ComfyUI reports per node (``executing``,
``execution_cached``) and per sampler step (``progress``); the original bridge turned that into
finished nodes over all nodes with the running node's steps inside, and so does this, from the
messages alone, so a real ComfyUI server and genserve's own runner give the same figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from genserve.workflows.events import overall_percent

FINAL_TYPES = frozenset({"execution_success", "execution_error", "execution_interrupted"})


def is_final(message: Mapping[str, Any]) -> bool:
    """Whether this message ends its prompt (success, error or interruption)."""
    return message.get("type") in FINAL_TYPES


def prompt_of(message: Mapping[str, Any]) -> str | None:
    data = message.get("data")
    return data.get("prompt_id") if isinstance(data, Mapping) else None


_NOT_MODELS = frozenset({"sampler_name", "scheduler_name", "filename_prefix"})


def models_of(graph: Mapping[str, Any]) -> frozenset[str]:
    """The model files a workflow names (``unet_name``, ``vae_name``, ``lora_name``...): what a
    backend that ran it keeps loaded, hence what affinity compares."""
    found = set()
    for node in graph.values():
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        for key, value in inputs.items():
            if key.endswith("_name") and key not in _NOT_MODELS and isinstance(value, str):
                found.add(value)
    return frozenset(found)


class ProgressTracker:
    """Feeds on one prompt's messages; ``percent`` never goes down and reaches 100 on success.

    After ``execution_error`` or ``execution_interrupted`` it takes nothing more: ComfyUI still
    sends ``executing {node: null}`` ("this prompt is done") after an error, and counting that as
    the end would show a failing job reaching 100% just before its error.
    """

    def __init__(self, graph: Mapping[str, Any]) -> None:
        self.total = max(len(graph), 1)
        self._finished: set[str] = set()
        self._running: str | None = None
        self._step = 0
        self._steps = 0
        self.percent = 0.0
        self.failed = False

    def feed(self, message: Mapping[str, Any]) -> bool:
        """Take one message; True when the percentage moved."""
        kind = message.get("type")
        if self.failed or kind in ("execution_error", "execution_interrupted"):
            self.failed = True
            return False
        data = message.get("data") if isinstance(message.get("data"), Mapping) else {}
        if kind == "execution_cached":
            self._finished.update(str(n) for n in data.get("nodes", ()))
        elif kind == "executing":
            if self._running is not None:
                self._finished.add(self._running)
            node = data.get("node")
            self._running = str(node) if node is not None else None
            self._step = self._steps = 0
            if node is None:
                return self._move(100.0)
        elif kind == "progress":
            self._step, self._steps = int(data.get("value", 0)), int(data.get("max", 0))
        elif kind == "execution_success":
            return self._move(100.0)
        else:
            return False
        finished = min(len(self._finished), self.total)
        return self._move(overall_percent(finished, self.total, self._step, self._steps))

    def _move(self, value: float) -> bool:
        value = min(value, 100.0)
        if value <= self.percent:
            return False
        self.percent = value
        return True
