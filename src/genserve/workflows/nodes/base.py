"""Node types and the registry that names them.

A node type is a declaration plus a plain function ``(ctx, **inputs) -> outputs``, the same idea as
ComfyUI's ``INPUT_TYPES`` / ``RETURN_TYPES`` / ``FUNCTION`` class attributes, but as data: the
registry is an object handed to whoever needs it (no module-level ``NODE_CLASS_MAPPINGS`` to patch),
and ``object_info()`` renders it in ComfyUI's ``/object_info`` shape so ComfyUI clients can use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.inputs import InputSpec


def _ignore_progress(step: int, total: int) -> None:
    return None


@dataclass
class NodeContext:
    """What a running node may use besides its inputs.

    Small on purpose: cancellation and progress are all a toy node needs. ``resources`` is where
    the runner's owner puts what real nodes need (the service RunContext, the model manager, the
    sandbox); node functions read it, the runner never does. ``prompt`` and ``extra_pnginfo`` are
    ComfyUI's hidden PROMPT and EXTRA_PNGINFO inputs (the API prompt, ``extra_data.extra_pnginfo``),
    which SaveImage writes into its PNGs.
    """

    prompt_id: str
    node_id: str
    class_type: str
    cancel_event: threading.Event = field(default_factory=threading.Event)
    progress_sink: Callable[[int, int], None] = _ignore_progress
    resources: Any = None
    prompt: Mapping[str, Any] | None = None
    extra_pnginfo: Mapping[str, Any] | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raise CANCELLED if the run was interrupted; long nodes call this every step."""
        if self.cancel_event.is_set():
            raise GenserveError(ErrorCode.CANCELLED, f"workflow {self.prompt_id} was interrupted")

    def progress(self, step: int, total: int) -> None:
        """Report ``step`` of ``total`` for this node (sampler steps); the runner turns it into events."""
        self.progress_sink(step, total)


@dataclass(frozen=True)
class NodeResult:
    """What a node function may return instead of a bare tuple: its outputs plus UI data.

    ``ui`` is what ComfyUI sends in the ``executed`` message and keeps in history for output nodes
    (``{"images": [{"filename": ..., "subfolder": ..., "type": "output"}]}``).
    """

    outputs: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


NodeFunction = Callable[..., "tuple[Any, ...] | NodeResult"]


@dataclass(frozen=True, eq=False)
class NodeType:
    """One node class: its inputs, outputs and the function that computes them.

    ``cacheable=False`` makes every run re-execute the node and everything downstream of it (ComfyUI's
    ``IS_CHANGED`` returning NaN). ``fingerprint`` is called with the node's widget values and its
    result joins the cache key, for nodes whose output depends on something outside the graph (a
    ``LoadImage`` hashes the file, so a replaced file is read again).

    ``lazy`` names inputs evaluated only on demand (ComfyUI's ``lazy=True``): ``needs`` gets the
    node's other inputs and answers which lazy ones to compute, so a switch runs one branch only.
    ``reusable`` is asked before a cached result is reused with the run's resources; an output
    node whose files were deleted answers False and runs again.
    """

    name: str
    function: NodeFunction
    required: Mapping[str, InputSpec] = field(default_factory=dict)
    optional: Mapping[str, InputSpec] = field(default_factory=dict)
    return_types: tuple[str, ...] = ()
    return_names: tuple[str, ...] | None = None
    display_name: str = ""
    category: str = "genserve"
    description: str = ""
    output_node: bool = False
    experimental: bool = False  # ComfyUI's badge for a node whose inputs may still change
    cacheable: bool = True
    fingerprint: Callable[..., Any] | None = None
    lazy: frozenset[str] = frozenset()
    needs: Callable[..., Iterable[str]] | None = None
    reusable: Callable[[NodeResult, Any], bool] | None = None

    def __post_init__(self) -> None:
        if self.return_names is not None and len(self.return_names) != len(self.return_types):
            raise ValueError(
                f"{self.name}: {len(self.return_names)} return names for {len(self.return_types)} types"
            )
        overlap = set(self.required) & set(self.optional)
        if overlap:
            raise ValueError(f"{self.name}: inputs both required and optional: {sorted(overlap)}")

    @property
    def title(self) -> str:
        return self.display_name or self.name

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.return_names if self.return_names is not None else self.return_types

    def input_spec(self, input_name: str) -> InputSpec | None:
        """A declared input, or a dynamic combo's ``"<combo>.<input>"`` in any of its options."""
        found = self.required.get(input_name) or self.optional.get(input_name)
        combo, dot, sub = input_name.rpartition(".")
        outer = self.input_spec(combo) if found is None and dot else None
        for option in outer.options if outer is not None else ():
            inner = dict((*option.required, *option.optional))
            if sub in inner:
                return inner[sub]
        return found

    def live_inputs(self, inputs: Mapping[str, Any]) -> dict[str, InputSpec]:
        """The inputs a prompt's node may give: the declared ones plus, for each dynamic combo,
        its chosen option's inputs as ``"<combo>.<input>"`` (ComfyUI's finalized class inputs).

        The inputs of options not chosen are left out, so a prompt's values for them are ignored
        as ComfyUI ignores them. A chosen option's input may be left out (ComfyUI would ask for it):
        the node function uses that input's default.
        """
        live = {**self.required, **self.optional}
        pending = list(live.items())
        while pending:
            name, spec = pending.pop()
            added = {f"{name}.{sub}": inner for sub, inner in spec.chosen_inputs(inputs.get(name))}
            live.update(added)
            pending.extend(added.items())
        return live

    def call(self, ctx: NodeContext, inputs: Mapping[str, Any]) -> NodeResult:
        """Run the function and check it returned what the declaration promises."""
        returned = self.function(ctx, **inputs)
        result = returned if isinstance(returned, NodeResult) else NodeResult(tuple(returned or ()))
        if len(result.outputs) != len(self.return_types):
            raise GenserveError(
                ErrorCode.INTERNAL,
                f"node type {self.name} returned {len(result.outputs)} outputs, "
                f"declared {len(self.return_types)}",
            )
        return result

    def object_info(self) -> dict[str, Any]:
        """This node in ComfyUI's ``/object_info`` shape."""
        required = {name: spec.to_object_info() for name, spec in self.required.items()}
        optional = {name: spec.to_object_info() for name, spec in self.optional.items()}
        inputs: dict[str, Any] = {"required": required}
        order: dict[str, list[str]] = {"required": list(required)}
        if optional:
            inputs["optional"] = optional
            order["optional"] = list(optional)
        info = {
            "input": inputs,
            "input_order": order,
            "output": list(self.return_types),
            "output_is_list": [False] * len(self.return_types),
            "output_name": list(self.output_names),
            "name": self.name,
            "display_name": self.title,
            "description": self.description,
            "python_module": "genserve",
            "category": self.category,
            "output_node": self.output_node,
        }
        if self.experimental:  # ComfyUI's server adds the key only when set
            info["experimental"] = True
        return info


class NodeRegistry:
    """The node types one runner knows, by class name."""

    def __init__(self, node_types: Iterable[NodeType] = ()) -> None:
        self._types: dict[str, NodeType] = {}
        for node_type in node_types:
            self.register(node_type)

    def register(self, node_type: NodeType) -> NodeType:
        """Add a node type; a second type under the same name is a programming error."""
        if node_type.name in self._types:
            raise ValueError(f"node type {node_type.name!r} is already registered")
        self._types[node_type.name] = node_type
        return node_type

    def get(self, name: str) -> NodeType | None:
        return self._types.get(name)

    def __getitem__(self, name: str) -> NodeType:
        node_type = self._types.get(name)
        if node_type is None:
            raise GenserveError(ErrorCode.NOT_FOUND, f"unknown node type {name!r}", node_type=name)
        return node_type

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[NodeType]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)

    def names(self) -> list[str]:
        return sorted(self._types)

    def object_info(self, name: str | None = None) -> dict[str, Any]:
        """ComfyUI's ``GET /object_info`` (all types) or ``GET /object_info/{name}`` (one) body."""
        if name is not None:
            return {name: self[name].object_info()}
        return {node_type.name: node_type.object_info() for node_type in self._types.values()}
