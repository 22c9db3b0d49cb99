"""Run a validated workflow graph: nodes in order, outputs along links, results reused across runs.

``WorkflowRunner.run`` is blocking and meant for an executor thread, like a service's ``run``.
A node is skipped when the output cache holds a result under its key (class, widget values and
ancestors' keys, see graph.cache_keys), so re-running a workflow with only the seed changed
re-runs only what the seed feeds. Events go to a callback as they happen; cancellation is a
``threading.Event`` checked between nodes and by nodes themselves through their context.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from genserve.errors import ErrorCode, GenserveError, as_genserve_error
from genserve.workflows.cache import OutputCache
from genserve.workflows.events import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    Progress,
    WorkflowEvent,
    one_line,
    overall_percent,
)
from genserve.workflows.graph import Graph, GraphNode, cache_keys, parse_graph
from genserve.workflows.nodes.base import NodeContext, NodeRegistry, NodeResult

EventSink = Callable[[WorkflowEvent], None]

log = logging.getLogger("genserve.workflows")


def _drop(_: WorkflowEvent) -> None:
    return None


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced.

    ``outputs`` holds each output node's UI data (what ComfyUI keeps in history); ``values`` every
    node's output tuple, for callers in the same process (the CLI, tests). ``executed`` ran this
    time; ``cached`` came from the cache.
    """

    prompt_id: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    values: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    executed: tuple[str, ...] = ()
    cached: tuple[str, ...] = ()


class WorkflowRunner:
    """Executes API-format workflows with the node types of one registry and one output cache."""

    def __init__(self, registry: NodeRegistry, cache_size: int = 64) -> None:
        self.registry = registry
        self.cache = OutputCache(cache_size)

    def validate(self, workflow: Mapping[str, Any], outputs: Iterable[str] | None = None) -> Graph:
        """Check a workflow without running it (what a door does before queueing)."""
        return parse_graph(workflow, self.registry, outputs)

    def run(
        self,
        workflow: Mapping[str, Any] | Graph,
        *,
        prompt_id: str | None = None,
        on_event: EventSink | None = None,
        cancel_event: threading.Event | None = None,
        resources: Any = None,
    ) -> RunResult:
        """Run ``workflow`` (raw API format or an already validated Graph) to its output nodes.

        Raises GraphValidationError (INVALID_INPUT) before anything runs, GenserveError(CANCELLED)
        when ``cancel_event`` is set, or the failing node's error (its GenserveError code, else
        INTERNAL) naming the node. ``resources`` reaches every node as ``ctx.resources``.
        """
        graph = workflow if isinstance(workflow, Graph) else self.validate(workflow)
        run = _Run(
            graph=graph,
            cache=self.cache,
            prompt_id=prompt_id or uuid.uuid4().hex,
            emit=on_event or _drop,
            cancel_event=cancel_event,
            resources=resources,
        )
        return run.execute()


class _Run:
    """The state of one run, so that ``WorkflowRunner`` itself stays stateless apart from its cache."""

    def __init__(
        self,
        *,
        graph: Graph,
        cache: OutputCache,
        prompt_id: str,
        emit: EventSink,
        cancel_event: threading.Event | None,
        resources: Any,
    ) -> None:
        self.graph = graph
        self.cache = cache
        self.prompt_id = prompt_id
        self._emit = emit
        self.cancel_event = cancel_event if cancel_event is not None else threading.Event()
        self.resources = resources
        self.results: dict[str, NodeResult] = {}
        self.done: list[str] = []
        self.ran: list[str] = []
        self.finished = 0
        self.total = 0

    def emit(self, event: WorkflowEvent) -> None:
        """Send an event; a failing listener (a closed socket) must not fail the run."""
        try:
            self._emit(event)
        except Exception:
            log.exception("workflow event listener failed on %s", event.type.value)

    def execute(self) -> RunResult:
        keys = cache_keys(self.graph, uuid.uuid4().hex)
        self.emit(ExecutionStart(self.prompt_id))
        cached: list[str] = []
        for node_id in self.graph.order:
            key = keys[node_id]
            hit = None if key.volatile else self.cache.get(key.digest)
            if hit is not None:
                self.results[node_id] = hit
                cached.append(node_id)
        self.done.extend(cached)
        self.emit(ExecutionCached(self.prompt_id, tuple(cached)))
        for node_id in cached:
            self._report_output(node_id)
        to_run = [node_id for node_id in self.graph.order if node_id not in self.results]
        self.total = len(to_run)
        try:
            for node_id in to_run:
                node = self.graph.nodes[node_id]
                if self.cancel_event.is_set():
                    raise self._interrupted(node, {})
                result = self._run_node(node)
                self.results[node_id] = result
                key = keys[node_id]
                if not key.volatile:
                    self.cache.put(key.digest, result)
                self.finished += 1
                self.done.append(node_id)
                self.ran.append(node_id)
                self._report_output(node_id)
            self.emit(ExecutionSuccess(self.prompt_id))
        finally:
            # Last, after success, error or interruption, as ComfyUI's prompt worker sends it.
            self.emit(Executing(self.prompt_id, None, self._overall()))
        return RunResult(
            prompt_id=self.prompt_id,
            outputs={
                node_id: dict(self.results[node_id].ui or {})
                for node_id in self.graph.order
                if self.graph.nodes[node_id].node_type.output_node
            },
            values={node_id: result.outputs for node_id, result in self.results.items()},
            executed=tuple(self.ran),
            cached=tuple(cached),
        )

    def _overall(self, step: int = 0, steps: int = 0) -> float:
        return overall_percent(self.finished, self.total, step, steps)

    def _report_output(self, node_id: str) -> None:
        if self.graph.nodes[node_id].node_type.output_node:
            ui = self.results[node_id].ui or {}
            self.emit(Executed(self.prompt_id, node_id, dict(ui)))

    def _inputs(self, node: GraphNode) -> dict[str, Any]:
        inputs = dict(node.values)
        for name, link in node.links.items():
            inputs[name] = self.results[link.node_id].outputs[link.output_index]
        return inputs

    def _run_node(self, node: GraphNode) -> NodeResult:
        self.emit(Executing(self.prompt_id, node.id, self._overall()))

        def progress(step: int, total: int) -> None:
            self.emit(Progress(self.prompt_id, node.id, step, total, self._overall(step, total)))

        ctx = NodeContext(
            prompt_id=self.prompt_id,
            node_id=node.id,
            class_type=node.class_type,
            cancel_event=self.cancel_event,
            progress_sink=progress,
            resources=self.resources,
        )
        try:
            return node.node_type.call(ctx, self._inputs(node))
        except Exception as exc:
            raise self._failed(node, exc) from exc

    def _interrupted(self, node: GraphNode, details: dict[str, Any]) -> GenserveError:
        self.emit(ExecutionInterrupted(self.prompt_id, node.id, node.class_type, tuple(self.done)))
        details = {**details, "node_id": node.id, "class_type": node.class_type}
        return GenserveError(ErrorCode.CANCELLED, f"workflow {self.prompt_id} was interrupted", **details)

    def _failed(self, node: GraphNode, exc: Exception) -> GenserveError:
        """Report a node's failure (interrupted or error) and build the error the caller gets."""
        error = as_genserve_error(exc)
        details = {**error.details, "node_id": node.id, "class_type": node.class_type}
        if error.code is ErrorCode.CANCELLED:
            return self._interrupted(node, details)
        # A client's mistake (a 4xx code) is one line; anything else keeps its traceback, in the log only.
        log.warning(
            "workflow %s: node %s (%s) failed: %s",
            self.prompt_id,
            node.id,
            node.class_type,
            exc,
            exc_info=exc if error.mapping.http_status >= 500 else None,
        )
        self.emit(
            ExecutionError(
                self.prompt_id,
                node_id=node.id,
                node_type=node.class_type,
                exception_message=one_line(str(exc)),
                exception_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                executed=tuple(self.done),
                current_inputs={name: repr(value)[:200] for name, value in node.values.items()},
            )
        )
        return GenserveError(
            error.code, f"node {node.id} ({node.class_type}) failed: {error.message}", **details
        )
