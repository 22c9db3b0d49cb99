"""Value and logic node types: the Primitive* constants, StringConcatenate, ComfySwitchNode, PreviewAny.

Templates wire one widget value into several nodes through these (a seed, a size, a prompt), and
pick between two sub-graphs with a switch. ComfySwitchNode's branches are lazy, as in ComfyUI:
the runner computes the ``switch`` input first and then only the chosen branch, so the branch
not taken never loads its models nor fails on its inputs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.inputs import Boolean, Float, Int, Linked, String, with_options
from genserve.workflows.nodes.base import NodeContext, NodeResult, NodeType


def _value(ctx: NodeContext, value: Any) -> tuple[Any]:
    return (value,)


def _concatenate(ctx: NodeContext, string_a: str, string_b: str, delimiter: str = "") -> tuple[str]:
    return (delimiter.join((string_a, string_b)),)


def _switch_needs(connected: set[str], switch: bool = False, **_: Any) -> Iterable[str]:
    """ComfyUI's check_lazy_status: the branch the switch picks, or the only one connected."""
    if connected == {"on_true"} or connected == {"on_false"}:
        return connected
    return ["on_true" if switch else "on_false"]


def _switch(ctx: NodeContext, switch: bool, on_false: Any = None, on_true: Any = None) -> tuple[Any]:
    if on_false is None and on_true is None:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            "at least one of on_false or on_true must be connected to Switch node",
            field="on_true",
        )
    if on_true is None:
        return (on_false,)
    if on_false is None:
        return (on_true,)
    return (on_true if switch else on_false,)


def preview_text(source: Any) -> str:
    """The text PreviewAny shows: strings as they are, numbers and booleans printed, anything
    else as JSON when it can be, else its ``str``."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, bool | int | float):
        return str(source)
    try:
        return json.dumps(source)
    except (TypeError, ValueError):
        return str(source)


def _preview_any(ctx: NodeContext, source: Any = None) -> NodeResult:
    text = preview_text(source)
    return NodeResult((text,), ui={"text": [text]})


def _primitive(name: str, display: str, value: Any, output: str) -> NodeType:
    return NodeType(
        name,
        _value,
        required={"value": value},
        return_types=(output,),
        display_name=display,
        category="utils/primitive",
    )


def primitive_node_types() -> list[NodeType]:
    big = sys.maxsize
    return [
        _primitive("PrimitiveString", "String", String(""), "STRING"),
        _primitive("PrimitiveStringMultiline", "String (Multiline)", String("", multiline=True), "STRING"),
        _primitive(
            "PrimitiveInt", "Int", with_options(Int(0, min=-big, max=big), control_after_generate=True), "INT"
        ),
        _primitive("PrimitiveFloat", "Float", Float(0.0, min=-big, max=big), "FLOAT"),
        _primitive("PrimitiveBoolean", "Boolean", Boolean(False), "BOOLEAN"),
        NodeType(
            "StringConcatenate",
            _concatenate,
            required={
                "string_a": String("", multiline=True),
                "string_b": String("", multiline=True),
                "delimiter": String(""),
            },
            return_types=("STRING",),
            display_name="Concatenate",
            category="utils/string",
        ),
        NodeType(
            "ComfySwitchNode",
            _switch,
            required={"switch": Boolean(False)},
            optional={"on_false": Linked("*"), "on_true": Linked("*")},
            return_types=("*",),
            return_names=("output",),
            display_name="Switch",
            category="logic",
            lazy=frozenset({"on_false", "on_true"}),
            needs=_switch_needs,
        ),
        NodeType(
            "PreviewAny",
            _preview_any,
            required={"source": Linked("*")},
            return_types=("STRING",),
            display_name="Preview Any",
            category="utils",
            output_node=True,
        ),
    ]
