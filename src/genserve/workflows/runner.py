"""Run a validated workflow graph: nodes in order, outputs along links, results reused across runs.

``WorkflowRunner.run`` is blocking and meant for an executor thread, like a service's ``run``.
A node is skipped when the output cache holds a result under its key (class, widget values and
ancestors' keys, see graph.cache_keys), so re-running a workflow with only the seed changed
re-runs only what the seed feeds, and re-running an identical prompt runs nothing (its output
nodes' UI data, saved file names included, comes from the cache, as in ComfyUI). Nodes run in
graph order as their outputs are demanded; a lazy input (a switch's branches) is computed only
once its node says it needs it. Events go to a callback as they happen; cancellation is a
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
        prompt: Mapping[str, Any] | None = None,
        extra_pnginfo: Mapping[str, Any] | None = None,
    ) -> RunResult:
        """Run ``workflow`` (raw API format or an already validated Graph) to its output nodes.

        Raises GraphValidationError (INVALID_INPUT) before anything runs, GenserveError(CANCELLED)
        when ``cancel_event`` is set, or the failing node's error (its GenserveError code, else
        INTERNAL) naming the node. ``resources`` reaches every node as ``ctx.resources``;
        ``prompt`` (default: ``workflow`` when it is a raw prompt) and ``extra_pnginfo`` as
        ``ctx.prompt`` and ``ctx.extra_pnginfo``.
        """
        graph = workflow if isinstance(workflow, Graph) else self.validate(workflow)
        run = _Run(
            graph=graph,
            cache=self.cache,
            prompt_id=prompt_id or uuid.uuid4().hex,
            emit=on_event or _drop,
            cancel_event=cancel_event,
            resources=resources,
            hidden=(prompt if prompt is not None or isinstance(workflow, Graph) else workflow, extra_pnginfo),
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
        hidden: tuple[Mapping[str, Any] | None, Mapping[str, Any] | None] = (None, None),
    ) -> None:
        self.graph = graph
        self.cache = cache
        self.prompt_id = prompt_id
        self._emit = emit
        self.cancel_event = cancel_event if cancel_event is not None else threading.Event()
        self.resources = resources
        self.prompt, self.extra_pnginfo = hidden
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
        cached = self._cache_hits(keys)
        self.emit(ExecutionCached(self.prompt_id, tuple(cached)))
        for node_id in cached:
            self._report_output(node_id)
        self.total = len(self._demanded(assume_all=True) - set(self.results))
        try:
            while (node := self._next_node()) is not None:
                if self.cancel_event.is_set():
                    raise self._interrupted(node, {})
                result = self._run_node(node)
                self.results[node.id] = result
                key = keys[node.id]
                if not key.volatile:
                    self.cache.put(key.digest, result)
                self.finished += 1
                self.done.append(node.id)
                self.ran.append(node.id)
                self._report_output(node.id)
            self.emit(ExecutionSuccess(self.prompt_id))
        finally:
            # Last, after success, error or interruption, as ComfyUI's prompt worker sends it.
            self.emit(Executing(self.prompt_id, None, self._overall()))
        return RunResult(
            prompt_id=self.prompt_id,
            outputs={
                node_id: dict(self.results[node_id].ui or {})
                for node_id in self.graph.order
                if self.graph.nodes[node_id].node_type.output_node and node_id in self.results
            },
            values={node_id: result.outputs for node_id, result in self.results.items()},
            executed=tuple(self.ran),
            cached=tuple(cached),
        )

    def _cache_hits(self, keys: Mapping[str, Any]) -> list[str]:
        """Take every usable cached result; a node whose result no longer holds (a deleted file)
        runs again, its ancestors coming from the cache or running before it."""
        cached: list[str] = []
        for node_id in self.graph.order:
            key = keys[node_id]
            hit = None if key.volatile else self.cache.get(key.digest)
            reusable = self.graph.nodes[node_id].node_type.reusable
            if hit is not None and (reusable is None or reusable(hit, self.resources)):
                self.results[node_id] = hit
                cached.append(node_id)
        self.done.extend(cached)
        return cached

    def _lazy_choice(self, node: GraphNode) -> set[str] | None:
        """The lazy inputs ``node`` needs, once its other linked inputs are computed; else None."""
        node_type = node.node_type
        links = {name: link for name, link in node.links.items() if name not in node_type.lazy}
        if any(link.node_id not in self.results for link in links.values()):
            return None
        if node_type.needs is None:
            return set(node_type.lazy)
        given = {**node.values, **{name: self._value(link) for name, link in links.items()}}
        connected = {name for name in node_type.lazy if name in node.links}
        return set(node_type.needs(connected=connected, **given)) & connected

    def _inputs_of(self, node: GraphNode, assume_all: bool) -> list[str]:
        """The upstream nodes ``node`` waits for: its plain links, and the lazy ones it chose."""
        lazy = node.node_type.lazy
        chosen = set(lazy) if assume_all or not lazy else (self._lazy_choice(node) or set())
        return [link.node_id for name, link in node.links.items() if name not in lazy or name in chosen]

    def _demanded(self, assume_all: bool = False) -> set[str]:
        """Nodes the outputs need now: walking back from them, through computed nodes no further."""
        demanded: set[str] = set()
        stack = list(self.graph.output_ids)
        while stack:
            node_id = stack.pop()
            if node_id in demanded or node_id not in self.graph.nodes:
                continue
            demanded.add(node_id)
            if node_id not in self.results:
                stack.extend(self._inputs_of(self.graph.nodes[node_id], assume_all))
        return demanded

    def _next_node(self) -> GraphNode | None:
        """The first node in graph order that is demanded, not computed, and has its inputs."""
        demanded = self._demanded()
        for node_id in self.graph.order:
            if node_id in self.results or node_id not in demanded:
                continue
            node = self.graph.nodes[node_id]
            ready = all(dep in self.results for dep in self._inputs_of(node, assume_all=False))
            if ready and (not node.node_type.lazy or self._lazy_choice(node) is not None):
                return node
        return None

    def _overall(self, step: int = 0, steps: int = 0) -> float:
        return overall_percent(self.finished, self.total, step, steps)

    def _report_output(self, node_id: str) -> None:
        if self.graph.nodes[node_id].node_type.output_node:
            ui = self.results[node_id].ui or {}
            self.emit(Executed(self.prompt_id, node_id, dict(ui)))

    def _value(self, link: Any) -> Any:
        return self.results[link.node_id].outputs[link.output_index]

    def _inputs(self, node: GraphNode) -> dict[str, Any]:
        """Widget values and computed links; a lazy input left uncomputed is passed as None."""
        inputs = dict(node.values)
        for name, link in node.links.items():
            inputs[name] = self._value(link) if link.node_id in self.results else None
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
            prompt=self.prompt,
            extra_pnginfo=self.extra_pnginfo,
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
