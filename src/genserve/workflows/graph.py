"""API-format workflow graphs: parse and validate, prune to what the outputs need, order, key.

A graph is ComfyUI's API format: ``{"6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat",
"clip": ["4", 1]}, "_meta": {"title": "Prompt"}}}``; a link is ``[node_id, output_index]``.
``parse_graph`` checks everything before a single node runs and reports every problem at once,
each naming the node, its class and the input, so a client fixes its workflow in one round trip.
Like ComfyUI, only the nodes some output node needs are validated and run.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.inputs import ANY_TYPE, InputValueError, accepts
from genserve.workflows.nodes.base import NodeRegistry, NodeType

log = logging.getLogger("genserve.workflows")


class Link(NamedTuple):
    """An input fed by output ``output_index`` of node ``node_id``."""

    node_id: str
    output_index: int


def is_link(value: Any) -> bool:
    """ComfyUI's link shape: a two-item list of a node id and an output index."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a graph; ``kind`` is ComfyUI's error type (``required_input_missing``...)."""

    kind: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    input_name: str | None = None

    def __str__(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node {self.node_id}" + (f" ({self.class_type})" if self.class_type else ""))
        if self.input_name is not None:
            where.append(f"input {self.input_name!r}")
        return (", ".join(where) + ": " if where else "") + self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "message": self.message,
            "node_id": self.node_id,
            "class_type": self.class_type,
            "input_name": self.input_name,
        }


class GraphValidationError(GenserveError):
    """INVALID_INPUT for a graph, keeping the typed problems for doors that answer ComfyUI's node_errors."""

    def __init__(self, problems: list[Problem]) -> None:
        shown = "; ".join(str(p) for p in problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            ErrorCode.INVALID_INPUT,
            f"invalid workflow, {len(problems)} {noun}: {shown}{more}",
            problems=[p.to_dict() for p in problems],
        )
        self.problems = problems


def _unknown(class_type: str) -> str:
    """The missing-type message; comfy.org's API nodes (``QwenImageEditApi``...) are named as such,
    so a user knows that no local model would stand in for them."""
    message = f"unknown node type {class_type!r}"
    if class_type.endswith("Api"):
        message += (
            ": a comfy.org API node, which sends the work to comfy.org's paid cloud service; "
            "genserve runs its own models and does not call it (use a local template instead)"
        )
    return message


def node_errors(problems: Iterable[Problem]) -> dict[str, Any]:
    """ComfyUI's ``node_errors`` body: per node id, its class and its errors."""
    out: dict[str, Any] = {}
    for p in problems:
        if p.node_id is None:
            continue
        entry = out.setdefault(p.node_id, {"errors": [], "dependent_outputs": [], "class_type": p.class_type})
        extra = {"input_name": p.input_name} if p.input_name else {}
        entry["errors"].append({"type": p.kind, "message": p.message, "details": str(p), "extra_info": extra})
    return out


@dataclass(frozen=True)
class GraphNode:
    """A validated node: widget values already coerced to their declared types, links kept apart."""

    id: str
    class_type: str
    node_type: NodeType
    title: str
    values: Mapping[str, Any]
    links: Mapping[str, Link]


@dataclass(frozen=True)
class Graph:
    """The nodes the outputs need, in an order where every node comes after the nodes it reads."""

    nodes: Mapping[str, GraphNode]
    order: tuple[str, ...]
    output_ids: tuple[str, ...]


def _id_key(node_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order ("2" before "10"), then the rest by name: a stable run order."""
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def parse_graph(data: Any, registry: NodeRegistry, outputs: Iterable[str] | None = None) -> Graph:
    """Validate an API-format graph against ``registry`` and return what to run, in order.

    ``outputs`` picks the target nodes (ComfyUI's partial execution); by default every output node.
    Raises GraphValidationError listing every problem.
    """
    problems: list[Problem] = []
    if not isinstance(data, Mapping) or not data:
        raise GraphValidationError(
            [Problem("invalid_prompt", "a workflow must be a non-empty JSON object of nodes")]
        )
    raw: dict[str, dict[str, Any]] = {}
    types: dict[str, NodeType] = {}
    for key, node in data.items():
        node_id = str(key)
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            problems.append(Problem("invalid_prompt", "a node needs a string class_type", node_id))
            continue
        class_type = node["class_type"]
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            problems.append(Problem("invalid_prompt", "inputs must be an object", node_id, class_type))
            continue
        raw[node_id] = {"class_type": class_type, "inputs": dict(inputs), "_meta": node.get("_meta")}
        node_type = registry.get(class_type)
        if node_type is None:
            problems.append(Problem("missing_node_type", _unknown(class_type), node_id, class_type))
        else:
            types[node_id] = node_type

    targets = _targets(raw, types, outputs, problems)
    needed = _needed(raw, targets)
    nodes: dict[str, GraphNode] = {}
    for node_id in sorted(needed, key=_id_key):
        if node_id in types:
            built = _check_node(node_id, raw[node_id], types[node_id], raw, types, problems)
            if built is not None:
                nodes[node_id] = built
    order = _order(nodes, problems)
    if problems:
        raise GraphValidationError(problems)
    return Graph(nodes=nodes, order=order, output_ids=tuple(sorted(targets, key=_id_key)))


def _targets(
    raw: dict[str, dict[str, Any]],
    types: dict[str, NodeType],
    outputs: Iterable[str] | None,
    problems: list[Problem],
) -> list[str]:
    if outputs is not None:
        chosen = [str(o) for o in outputs]
        for node_id in chosen:
            if node_id not in raw:
                problems.append(Problem("invalid_prompt", "requested output node does not exist", node_id))
        return [node_id for node_id in chosen if node_id in raw]
    found = [node_id for node_id, node_type in types.items() if node_type.output_node]
    if not found and types:
        problems.append(
            Problem("prompt_no_outputs", "the workflow has no output node (SaveImage, PreviewImage...)")
        )
    return found


def _needed(raw: dict[str, dict[str, Any]], targets: list[str]) -> set[str]:
    """The targets and every node they read from, directly or not (dangling links end the walk)."""
    needed: set[str] = set()
    stack = list(targets)
    while stack:
        node_id = stack.pop()
        if node_id in needed or node_id not in raw:
            continue
        needed.add(node_id)
        stack.extend(str(v[0]) for v in raw[node_id]["inputs"].values() if is_link(v))
    return needed


def _check_node(
    node_id: str,
    node: dict[str, Any],
    node_type: NodeType,
    raw: dict[str, dict[str, Any]],
    types: dict[str, NodeType],
    problems: list[Problem],
) -> GraphNode | None:
    class_type = node_type.name
    inputs: dict[str, Any] = node["inputs"]
    before = len(problems)

    def report(kind: str, input_name: str, message: str) -> None:
        problems.append(Problem(kind, message, node_id, class_type, input_name))

    for name in node_type.required:
        if name not in inputs:
            report("required_input_missing", name, "required input is missing")
    values: dict[str, Any] = {}
    links: dict[str, Link] = {}
    live = node_type.live_inputs(inputs)
    for name, value in inputs.items():
        spec = live.get(name)
        if spec is None and is_link(value):
            # A link feeds data the workflow means to use: running without it would give another
            # result than the workflow's author got, so it is refused rather than dropped.
            report(
                "bad_linked_input",
                name,
                f"links to an input {class_type} does not have here (genserve's {class_type} takes "
                f"{', '.join(live) or 'no inputs'})",
            )
            continue
        if spec is None:
            # A constant for an input the node lacks is what the UI leaves behind (a widget of
            # another version); ComfyUI ignores it and so does genserve, saying so in the log.
            log.info(
                "node %s (%s): input %r is not one genserve's node takes; ignored", node_id, class_type, name
            )
            continue
        if is_link(value):
            link = Link(str(value[0]), int(value[1]))
            upstream = raw.get(link.node_id)
            if upstream is None:
                report(
                    "bad_linked_input", name, f"links to node {link.node_id}, which is not in the workflow"
                )
                continue
            upstream_type = types.get(link.node_id)
            if upstream_type is None:
                continue  # its unknown class is already reported
            outputs = upstream_type.return_types
            if not 0 <= link.output_index < len(outputs):
                report(
                    "bad_linked_input",
                    name,
                    f"links to output {link.output_index} of node {link.node_id} ({upstream_type.name}), "
                    f"which has {len(outputs)} output(s)",
                )
                continue
            output_type = outputs[link.output_index]
            if not accepts(spec.type, output_type):
                report(
                    "return_type_mismatch",
                    name,
                    f"expects {spec.type} but node {link.node_id} ({upstream_type.name}) "
                    f"output {link.output_index} is {output_type}",
                )
                continue
            links[name] = link
        elif spec.type == ANY_TYPE:
            values[name] = value  # ComfyUI passes a constant on to an input of any type as it is
        elif not spec.is_widget:
            report(
                "invalid_input_type",
                name,
                f"expects a {spec.type} link [node_id, output_index], got {value!r}",
            )
        else:
            try:
                values[name] = spec.coerce(value)
            except InputValueError as exc:
                report(exc.kind, name, exc.message)
    if len(problems) > before:
        return None
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, Mapping) and isinstance(meta.get("title"), str) else None
    return GraphNode(node_id, class_type, node_type, title or node_type.title, values, links)


def _order(nodes: dict[str, GraphNode], problems: list[Problem]) -> tuple[str, ...]:
    """Kahn's topological sort, ties broken by node id; nodes left over sit on or behind a cycle."""
    # Links to nodes that failed their own checks are left out: those nodes are reported already.
    waiting = {
        n: {link.node_id for link in node.links.values() if link.node_id in nodes}
        for n, node in nodes.items()
    }
    readers: dict[str, set[str]] = {node_id: set() for node_id in nodes}
    for node_id, deps in waiting.items():
        for dep in deps:
            readers[dep].add(node_id)
    ready = [(_id_key(n), n) for n, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        for reader in readers[node_id]:
            waiting[reader].discard(node_id)
            if not waiting[reader]:
                heapq.heappush(ready, (_id_key(reader), reader))
    left = {n for n in nodes if n not in set(order)}
    for node_id in sorted(left, key=_id_key):
        if _reaches(node_id, node_id, nodes, left):
            node = nodes[node_id]
            problems.append(
                Problem(
                    "dependency_cycle", "the node depends on itself through a cycle", node_id, node.class_type
                )
            )
    return tuple(order)


def _reaches(start: str, goal: str, nodes: dict[str, GraphNode], within: set[str]) -> bool:
    seen: set[str] = set()
    stack = [link.node_id for link in nodes[start].links.values()]
    while stack:
        node_id = stack.pop()
        if node_id == goal:
            return True
        if node_id in seen or node_id not in within:
            continue
        seen.add(node_id)
        stack.extend(link.node_id for link in nodes[node_id].links.values())
    return False


@dataclass(frozen=True)
class CacheKey:
    """A node's identity for the output cache; ``volatile`` when it or an ancestor is not cacheable."""

    digest: str
    volatile: bool


def cache_keys(graph: Graph, run_nonce: str) -> dict[str, CacheKey]:
    """Per node: a hash of its class, its widget values, its fingerprint and, per linked input, the
    upstream node's key and output index.

    Node ids take no part, so the same sub-graph under other ids (another client's copy of a
    workflow) hits the same entries. A node that is not cacheable mixes in ``run_nonce``, so it and
    everything downstream get new keys every run.
    """
    keys: dict[str, CacheKey] = {}
    for node_id in graph.order:
        node = graph.nodes[node_id]
        node_type = node.node_type
        volatile = not node_type.cacheable
        parts: list[Any] = [node.class_type, run_nonce if volatile else None]
        if node_type.fingerprint is not None:
            try:
                parts.append(node_type.fingerprint(**node.values))
            except Exception as exc:
                problem = Problem("invalid_input", f"cannot read its inputs: {exc}", node_id, node.class_type)
                raise GraphValidationError([problem]) from exc
        for name in sorted(set(node.values) | set(node.links)):
            if name in node.links:
                link = node.links[name]
                upstream = keys[link.node_id]
                volatile = volatile or upstream.volatile
                parts.append([name, "link", upstream.digest, link.output_index])
            else:
                parts.append([name, "value", node.values[name]])
        text = json.dumps(parts, sort_keys=True, default=repr, separators=(",", ":"))
        keys[node_id] = CacheKey(hashlib.sha256(text.encode()).hexdigest(), volatile)
    return keys
