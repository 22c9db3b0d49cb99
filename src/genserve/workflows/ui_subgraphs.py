"""Flattening a UI-format workflow into API-format nodes: subgraphs, bypass, virtual nodes.

The frontend wraps every node (inner subgraph nodes included) in an executable record keyed by its
execution id (``"<instance id>:...:<node id>"``) and resolves each input link from there: a link
from a subgraph's input node leaves through the instance (to what feeds the instance, or to the
instance's widget value), a link from an instance enters its definition through the output node,
a bypassed node hands over its input of the matching type, a reroute hands over its input, and a
muted node stays a link that is then dropped with the node. This module does the same on the
JSON, without a canvas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.ui_widgets import widget_values

MODE_NEVER = 2
MODE_BYPASS = 4
VIRTUAL_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "SetNode", "GetNode"})
SUBGRAPH_INPUT_ID = -10
SUBGRAPH_OUTPUT_ID = -20

# A node type's /object_info entry, or None when the registry lacks the type.
ObjectInfo = Callable[[str], "Mapping[str, Any] | None"]


_MAX_DEPTH = 16
Link = tuple[int, int, int, int, int, Any]


class UIWorkflowError(GenserveError):
    """A UI-format workflow that cannot be converted; one error, the reason in its message."""

    def __init__(self, reason: str, source: str = "the workflow") -> None:
        super().__init__(
            ErrorCode.INVALID_INPUT,
            f"{source} is in ComfyUI's UI format and could not be converted to API format "
            f'({reason}); export it with "Save (API)" in ComfyUI and use that instead',
        )
        self.reason = reason


def parse_link(raw: Any) -> tuple[int, int, int, int, int, Any]:
    """``(id, origin_id, origin_slot, target_id, target_slot, type)`` from either link shape."""
    if isinstance(raw, Mapping):
        fields = [raw.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot")]
        kind = raw.get("type")
    elif isinstance(raw, list | tuple) and len(raw) >= 5:
        fields = list(raw[:5])
        kind = raw[5] if len(raw) > 5 else None
    else:
        raise UIWorkflowError(f"a link must be a list or an object, got {str(raw)[:60]}")
    if any(isinstance(f, bool) or not isinstance(f, int | float | str) for f in fields):
        raise UIWorkflowError(f"link {fields[0]!r} has a missing or non-numeric field")
    link_id, origin_id, origin_slot, target_id, target_slot = (int(f) for f in fields)
    return link_id, origin_id, origin_slot, target_id, target_slot, kind


class _Value(NamedTuple):
    """An input resolved to a value (an instance's widget), not to a node's output."""

    value: Any


class _Output(NamedTuple):
    node_id: str
    slot: int


@dataclass(frozen=True)
class _Scope:
    """One graph level: the root or one subgraph definition."""

    key: str
    nodes: Mapping[str, Mapping[str, Any]]
    links: Mapping[int, Link]
    definition: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class _Dto:
    """A node where it sits: its instance path, its scope and the instance that holds it."""

    path: tuple[str, ...]
    scope: _Scope
    node: Mapping[str, Any]
    instance: _Dto | None

    @property
    def exec_id(self) -> str:
        return ":".join((*self.path, str(self.node["id"])))

    @property
    def type(self) -> str:
        return str(self.node.get("type"))

    @property
    def inputs(self) -> list[Mapping[str, Any]]:
        return list(self.node.get("inputs") or [])

    @property
    def sockets(self) -> set[str]:
        """Inputs saved as plain sockets, without the frontend's ``widget`` marker."""
        return {str(i.get("name")) for i in self.inputs if not i.get("widget")}


def _scope(key: str, graph: Mapping[str, Any], definition: Mapping[str, Any] | None = None) -> _Scope:
    nodes: dict[str, Mapping[str, Any]] = {}
    for node in graph.get("nodes") or []:
        if not isinstance(node, Mapping) or "id" not in node or not isinstance(node.get("type"), str):
            raise UIWorkflowError("every node needs an 'id' and a string 'type'")
        nodes[str(node["id"])] = node
    links = {link[0]: link for link in map(parse_link, graph.get("links") or [])}
    return _Scope(key, nodes, links, definition)


def _compatible(a: Any, b: Any) -> bool:
    """LiteGraph's connection rule: ``*`` or empty matches anything; unions match on any member."""
    if a in ("", "*", 0, None) or b in ("", "*", 0, None) or a == b:
        return True
    left = {part.strip().lower() for part in str(a).split(",")}
    right = {part.strip().lower() for part in str(b).split(",")}
    return bool(left & right)


class Flattener:
    """One conversion: every node wrapped, primitives applied, then each kept node's inputs resolved."""

    def __init__(self, workflow: Mapping[str, Any], object_info: ObjectInfo) -> None:
        self.object_info = object_info
        definitions = workflow.get("definitions") or {}
        subgraphs = definitions.get("subgraphs") or [] if isinstance(definitions, Mapping) else []
        self.subgraphs: dict[str, Mapping[str, Any]] = {
            str(s["id"]): s for s in subgraphs if isinstance(s, Mapping) and "id" in s
        }
        self._scopes: dict[str, _Scope] = {}
        self.root = _scope("", workflow)
        self.dtos: dict[str, _Dto] = {}
        self.overrides: dict[tuple[str, str], Any] = {}

    def prompt(self) -> dict[str, Any]:
        self._expand(self.root, (), None, 0)
        for dto in list(self.dtos.values()):
            if dto.type == "PrimitiveNode":
                self._push_primitive(dto)
        output: dict[str, Any] = {}
        for exec_id, dto in self.dtos.items():
            kept = dto.node.get("mode") not in (MODE_NEVER, MODE_BYPASS)
            if kept and dto.type not in VIRTUAL_TYPES and dto.type not in self.subgraphs:
                output[exec_id] = self._api_node(dto)
        for node in output.values():  # inputs that read a dropped (muted) node go with it
            for name, value in list(node["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                    del node["inputs"][name]
        return output

    # -- building ---------------------------------------------------------------------------

    def _definition_scope(self, definition: Mapping[str, Any]) -> _Scope:
        key = str(definition["id"])
        if key not in self._scopes:
            self._scopes[key] = _scope(key, definition, definition)
        return self._scopes[key]

    def _expand(self, scope: _Scope, path: tuple[str, ...], instance: _Dto | None, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise UIWorkflowError(f"subgraphs nested deeper than {_MAX_DEPTH} levels (one contains itself?)")
        for node in scope.nodes.values():
            dto = _Dto(path, scope, node, instance)
            self.dtos[dto.exec_id] = dto
            definition = self.subgraphs.get(dto.type)
            if definition is not None and node.get("mode") not in (MODE_NEVER, MODE_BYPASS):
                inner = self._definition_scope(definition)
                self._expand(inner, (*path, str(node["id"])), dto, depth + 1)

    def _push_primitive(self, dto: _Dto) -> None:
        """A PrimitiveNode's value goes into each widget it feeds, as its ``applyToGraph`` does."""
        values = dto.node.get("widgets_values")
        if not isinstance(values, list) or not values:
            return
        for output in dto.node.get("outputs") or []:
            for link_id in output.get("links") or []:
                link = dto.scope.links.get(link_id)
                target = dto.scope.nodes.get(str(link[3])) if link else None
                if link is None or target is None or link[4] >= len(target.get("inputs") or []):
                    continue
                slot = target["inputs"][link[4]]
                name = (slot.get("widget") or {}).get("name") or slot.get("name")
                self.overrides[(":".join((*dto.path, str(link[3]))), str(name))] = values[0]

    def _api_node(self, dto: _Dto) -> dict[str, Any]:
        info = self.object_info(dto.type)
        inputs = widget_values(info, dto.node.get("widgets_values"), dto.sockets)
        for (exec_id, name), value in self.overrides.items():
            if exec_id == dto.exec_id:
                inputs[name] = value
        inputs = {k: {"__value__": v} if isinstance(v, list) else v for k, v in inputs.items()}
        for slot, slot_info in enumerate(dto.inputs):
            if slot_info.get("link") is None:
                continue
            resolved = self._resolve_input(dto, slot, set())
            if isinstance(resolved, _Value):
                value = resolved.value
                inputs[str(slot_info.get("name"))] = (
                    {"__value__": value} if isinstance(value, list) else value
                )
            elif isinstance(resolved, _Output):
                inputs[str(slot_info.get("name"))] = [resolved.node_id, resolved.slot]
        title = dto.node.get("title") or (info or {}).get("display_name") or dto.type
        return {"inputs": inputs, "class_type": dto.type, "_meta": {"title": title}}

    # -- resolving --------------------------------------------------------------------------

    @staticmethod
    def _visit(visited: set[str], dto: _Dto, side: str, slot: int) -> None:
        """Guard against link cycles; keyed by execution id, so two chained instances of one
        subgraph are two places, not a cycle."""
        key = f"{dto.exec_id}[{side}]{slot}"
        if key in visited:
            raise UIWorkflowError(f"circular reference through node {dto.exec_id}")
        visited.add(key)

    def _resolve_input(
        self, dto: _Dto, slot: int, visited: set[str], kind: Any = None
    ) -> _Value | _Output | None:
        self._visit(visited, dto, "I", slot)
        inputs = dto.inputs
        if slot >= len(inputs) or inputs[slot].get("link") is None:
            return None
        link = dto.scope.links.get(int(inputs[slot]["link"]))
        if link is None:
            raise UIWorkflowError(f"node {dto.exec_id} reads link {inputs[slot]['link']}, which is not there")
        kind = kind if kind is not None else inputs[slot].get("type")
        if link[1] == SUBGRAPH_INPUT_ID:
            if dto.instance is None or dto.scope.definition is None:
                return None
            return self._from_instance(dto.instance, dto.scope.definition, link[2], visited)
        origin = self.dtos.get(":".join((*dto.path, str(link[1]))))
        if origin is None:
            raise UIWorkflowError(f"link {link[0]} comes from node {link[1]}, which is not there")
        return self._resolve_output(origin, link[2], kind, visited)

    def _resolve_output(self, dto: _Dto, slot: int, kind: Any, visited: set[str]) -> _Value | _Output | None:
        self._visit(visited, dto, "O", slot)
        if dto.node.get("mode") == MODE_BYPASS:
            index = self._bypass_slot(dto, slot, kind)
            return None if index < 0 else self._resolve_input(dto, index, visited)
        definition = self.subgraphs.get(dto.type)
        if definition is not None:
            return self._subgraph_output(dto, definition, slot, kind, visited)
        if dto.type in VIRTUAL_TYPES:
            if dto.type == "GetNode":
                setter = self._setter(dto)
                return None if setter is None else self._resolve_input(setter, 0, visited, kind)
            if dto.type == "PrimitiveNode" or slot >= len(dto.inputs):
                return None
            return self._resolve_input(dto, slot, visited, kind)
        return _Output(dto.exec_id, slot)

    def _subgraph_output(
        self, dto: _Dto, definition: Mapping[str, Any], slot: int, kind: Any, visited: set[str]
    ) -> _Value | _Output | None:
        outputs = definition.get("outputs") or []
        link_ids = (outputs[slot].get("linkIds") or []) if slot < len(outputs) else []
        link = self._definition_scope(definition).links.get(link_ids[0]) if link_ids else None
        if link is None:
            return None
        if link[1] == SUBGRAPH_INPUT_ID:
            return self._from_instance(dto, definition, link[2], visited)
        inner = self.dtos.get(":".join((*dto.path, str(dto.node["id"]), str(link[1]))))
        if inner is None:
            raise UIWorkflowError(f"subgraph {definition.get('name') or dto.type}: no node {link[1]}")
        return self._resolve_output(inner, link[2], kind, visited)

    def _from_instance(
        self, instance: _Dto, definition: Mapping[str, Any], index: int, visited: set[str]
    ) -> _Value | _Output | None:
        """A subgraph input: what feeds the instance's input of that name, else its widget value."""
        sub_inputs = definition.get("inputs") or []
        if index >= len(sub_inputs):
            return None
        name = sub_inputs[index].get("name")
        for slot, slot_info in enumerate(instance.inputs):
            if slot_info.get("name") == name and slot_info.get("link") is not None:
                return self._resolve_input(instance, slot, visited)
        return self._instance_widget(instance, index)

    def _instance_widget(self, instance: _Dto, index: int) -> _Value | None:
        """The instance's widget for subgraph input ``index``: its own saved value (older files keep
        one per widget input, in input order), else the value of the first inner widget it feeds."""
        definition = self.subgraphs[instance.type]
        sub_inputs = definition.get("inputs") or []
        name = str(sub_inputs[index].get("name"))
        if (instance.exec_id, name) in self.overrides:
            return _Value(self.overrides[(instance.exec_id, name)])
        widget_inputs = [i for i in range(len(sub_inputs)) if self._inner_target(definition, i, True)]
        if index not in widget_inputs:
            return None
        saved = instance.node.get("widgets_values")
        position = widget_inputs.index(index)
        if isinstance(saved, list) and position < len(saved):
            return _Value(saved[position])
        target = self._inner_target(definition, index, True)
        if target is None:
            return None
        inner = self.dtos.get(":".join((*instance.path, str(instance.node["id"]), target[0])))
        return None if inner is None else self._widget_of(inner, target[1])

    def _inner_target(
        self, definition: Mapping[str, Any], index: int, widget: bool
    ) -> tuple[str, str] | None:
        """The first inner (node id, input name) a subgraph input feeds; with ``widget``, a widget input."""
        scope = self._definition_scope(definition)
        for link_id in definition["inputs"][index].get("linkIds") or []:
            link = scope.links.get(link_id)
            node = scope.nodes.get(str(link[3])) if link else None
            inputs = list(node.get("inputs") or []) if node else []
            if link is None or link[4] >= len(inputs):
                continue
            if not widget or inputs[link[4]].get("widget"):
                return str(link[3]), str(inputs[link[4]].get("name"))
        return None

    def _widget_of(self, dto: _Dto, input_name: str) -> _Value | None:
        if (dto.exec_id, input_name) in self.overrides:
            return _Value(self.overrides[(dto.exec_id, input_name)])
        definition = self.subgraphs.get(dto.type)
        if definition is not None:
            names = [str(i.get("name")) for i in definition.get("inputs") or []]
            return self._instance_widget(dto, names.index(input_name)) if input_name in names else None
        values = widget_values(self.object_info(dto.type), dto.node.get("widgets_values"), dto.sockets)
        return _Value(values[input_name]) if input_name in values else None

    def _bypass_slot(self, dto: _Dto, slot: int, kind: Any) -> int:
        """The input a bypassed node passes to output ``slot``: same index if it fits, else by type."""
        inputs = dto.inputs
        if not inputs:
            return -1
        if kind in ("*", "", None):
            return slot if slot < len(inputs) else 0
        outputs = list(dto.node.get("outputs") or [])
        out_type = outputs[slot].get("type") if slot < len(outputs) else kind

        def fits(i: int) -> bool:
            return _compatible(inputs[i].get("type"), out_type) and _compatible(inputs[i].get("type"), kind)

        if slot < len(inputs) and fits(slot):
            return slot
        exact = [i for i, slot_info in enumerate(inputs) if slot_info.get("type") == kind]
        if exact:
            return exact[0]
        return next((i for i in range(len(inputs)) if fits(i)), -1)

    def _setter(self, getter: _Dto) -> _Dto | None:
        """KJNodes' SetNode with the same constant name as this GetNode, in the same graph level."""
        name = (getter.node.get("widgets_values") or [None])[0]
        for dto in self.dtos.values():
            same_level = dto.path == getter.path and dto.scope is getter.scope
            if dto.type == "SetNode" and same_level and (dto.node.get("widgets_values") or [None])[0] == name:
                return dto
        return None
