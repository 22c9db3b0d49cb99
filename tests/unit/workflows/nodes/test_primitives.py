"""Primitive*, StringConcatenate, PreviewAny and ComfySwitchNode: values flow as in ComfyUI, and the
switch computes only the branch it picks (the other may even fail: it never runs)."""

from __future__ import annotations

from typing import Any

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.inputs import Linked
from genserve.workflows.nodes.base import NodeContext, NodeRegistry, NodeType
from genserve.workflows.nodes.primitives import preview_text, primitive_node_types
from genserve.workflows.runner import WorkflowRunner


def _boom(ctx: NodeContext) -> tuple[str]:
    ctx.resources.append(ctx.node_id)
    raise RuntimeError("the branch not taken ran")


def _shout(ctx: NodeContext, text: str) -> tuple[str]:
    ctx.resources.append(ctx.node_id)
    return (text.upper(),)


@pytest.fixture
def runner() -> WorkflowRunner:
    toys = [
        NodeType("Boom", _boom, return_types=("STRING",)),
        NodeType("Shout", _shout, required={"text": Linked("STRING")}, return_types=("STRING",)),
    ]
    return WorkflowRunner(NodeRegistry([*primitive_node_types(), *toys]), cache_size=0)


def preview(runner: WorkflowRunner, prompt: dict[str, Any], ran: list[str] | None = None) -> str:
    result = runner.run(prompt, resources=ran if ran is not None else [])
    [text] = result.outputs["9"]["text"]
    assert result.values["9"] == (text,)
    return text


def switch_prompt(switch: Any, *, on_false: bool = True) -> dict[str, Any]:
    prompt: dict[str, Any] = {
        "1": {"class_type": "PrimitiveBoolean", "inputs": {"value": switch}},
        "2": {"class_type": "PrimitiveString", "inputs": {"value": "yes"}},
        "3": {"class_type": "Boom", "inputs": {}},
        "4": {"class_type": "Shout", "inputs": {"text": ["2", 0]}},
        "5": {"class_type": "ComfySwitchNode", "inputs": {"switch": ["1", 0], "on_true": ["4", 0]}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }
    if on_false:
        prompt["5"]["inputs"]["on_false"] = ["3", 0]
    return prompt


def test_primitives_pass_their_value_on(runner: WorkflowRunner) -> None:
    for class_type, value, shown in [
        ("PrimitiveInt", -(2**40), str(-(2**40))),
        ("PrimitiveFloat", 2.5, "2.5"),
        ("PrimitiveBoolean", True, "True"),
        ("PrimitiveString", "a cat", "a cat"),
        ("PrimitiveStringMultiline", "line 1\nline 2", "line 1\nline 2"),
    ]:
        prompt = {
            "1": {"class_type": class_type, "inputs": {"value": value}},
            "9": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        }
        assert preview(runner, prompt) == shown


def test_string_concatenate_joins_with_the_delimiter(runner: WorkflowRunner) -> None:
    prompt = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "a red"}},
        "2": {
            "class_type": "StringConcatenate",
            "inputs": {"string_a": ["1", 0], "string_b": "fox", "delimiter": ", "},
        },
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    assert preview(runner, prompt) == "a red, fox"


def test_switch_runs_only_the_branch_it_picks(runner: WorkflowRunner) -> None:
    ran: list[str] = []
    assert preview(runner, switch_prompt(True), ran) == "YES"
    assert ran == ["4"]  # Shout ran; Boom, on the branch not taken, never did
    with pytest.raises(GenserveError) as info:  # the other branch is computed when picked
        preview(runner, switch_prompt(False), [])
    assert info.value.details["node_id"] == "3"


def test_switch_with_one_branch_takes_it_whatever_the_switch(runner: WorkflowRunner) -> None:
    assert preview(runner, switch_prompt(False, on_false=False)) == "YES"


def test_switch_with_no_branch_is_refused(runner: WorkflowRunner) -> None:
    prompt = switch_prompt(True, on_false=False)
    del prompt["5"]["inputs"]["on_true"]
    with pytest.raises(GenserveError) as info:
        preview(runner, prompt)
    assert info.value.code is ErrorCode.INVALID_INPUT and "on_false or on_true" in info.value.message


def test_preview_text_is_comfyuis() -> None:
    assert preview_text(None) == "None"
    assert preview_text({"a": [1, 2]}) == '{"a": [1, 2]}'
    assert preview_text(object()).startswith("<object")


def test_object_info_shapes(runner: WorkflowRunner) -> None:
    info = runner.registry.object_info()
    assert info["PrimitiveInt"]["input"]["required"]["value"][1]["control_after_generate"] is True
    assert info["PrimitiveStringMultiline"]["input"]["required"]["value"] == [
        "STRING",
        {"default": "", "multiline": True},
    ]
    switch = info["ComfySwitchNode"]
    assert switch["input_order"] == {"required": ["switch"], "optional": ["on_false", "on_true"]}
    assert switch["output_name"] == ["output"] and switch["category"] == "logic"
    assert info["PreviewAny"]["output_node"] is True
    assert info["StringConcatenate"]["input_order"]["required"] == ["string_a", "string_b", "delimiter"]


def test_a_constant_on_an_any_type_input_is_passed_on(runner: WorkflowRunner) -> None:
    """A subgraph input fed by a widget of its node converts to a constant, as in the 2.1 templates'
    switches between the written prompt and the enhanced one: ComfyUI passes it on as it is."""
    prompt = switch_prompt(False)
    prompt["5"]["inputs"]["on_false"] = "as written"
    assert preview(runner, prompt) == "as written"
