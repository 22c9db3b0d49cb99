"""Node declarations: widget coercion, link type matching, the registry and ComfyUI's object_info shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.inputs import Boolean, Combo, Float, InputValueError, Int, Linked, String, accepts
from genserve.workflows.nodes.base import NodeContext, NodeRegistry, NodeResult, NodeType
from tests.unit.workflows.conftest import ALL_TYPES, COLLECT, NUMBER, SCALE


@pytest.mark.parametrize(
    ("spec_value", "given", "expected"),
    [
        (Int(0), 5, 5),
        (Int(0), 5.0, 5),
        (Int(0), " 7 ", 7),
        (Float(0.0), 2, 2.0),
        (Float(0.0), "2.5", 2.5),
        (Boolean(), True, True),
        (Boolean(), "false", False),
        (String(), "a cat", "a cat"),
        (Combo(["euler", "dpm"]), "dpm", "dpm"),
    ],
)
def test_widget_values_are_coerced_to_their_declared_type(spec_value: Any, given: Any, expected: Any) -> None:
    coerced = spec_value.coerce(given)
    assert coerced == expected
    assert type(coerced) is type(expected)


@pytest.mark.parametrize(
    ("spec_value", "given", "kind"),
    [
        (Int(0), 1.5, "invalid_input_type"),
        (Int(0), True, "invalid_input_type"),
        (Int(0), "seven", "invalid_input_type"),
        (Int(0, min=1), 0, "value_smaller_than_min"),
        (Int(0, max=10), 11, "value_bigger_than_max"),
        (Float(0.0), "nan", "invalid_input_type"),
        (Float(0.0, max=1.0), 1.5, "value_bigger_than_max"),
        (Boolean(), 1, "invalid_input_type"),
        (String(), 3, "invalid_input_type"),
        (Combo(["euler", "dpm"]), "heun", "value_not_in_list"),
        (Linked("MODEL"), "model.safetensors", "invalid_input_type"),
    ],
)
def test_bad_widget_values_say_what_is_wrong(spec_value: Any, given: Any, kind: str) -> None:
    with pytest.raises(InputValueError) as excinfo:
        spec_value.coerce(given)
    assert excinfo.value.kind == kind
    assert excinfo.value.message


def test_combo_choices_may_be_read_fresh_at_every_use() -> None:
    files = ["a.safetensors"]
    spec = Combo(lambda: list(files))
    with pytest.raises(InputValueError):
        spec.coerce("b.safetensors")
    files.append("b.safetensors")
    assert spec.coerce("b.safetensors") == "b.safetensors"
    assert spec.to_object_info() == [["a.safetensors", "b.safetensors"]]


@pytest.mark.parametrize(
    ("input_type", "output_type", "ok"),
    [
        ("MODEL", "MODEL", True),
        ("MODEL", "CLIP", False),
        ("*", "LATENT", True),
        ("IMAGE", "*", True),
        ("IMAGE,MASK", "MASK", True),
        ("IMAGE", "MASK,LATENT", False),
    ],
)
def test_link_types_match_like_comfyui(input_type: str, output_type: str, ok: bool) -> None:
    assert accepts(input_type, output_type) is ok


def test_object_info_has_comfyui_shape(registry: NodeRegistry) -> None:
    info = registry.object_info()
    assert set(info) == {t.name for t in ALL_TYPES}
    scale = info["Scale"]
    assert scale["input"]["required"] == {
        "x": ["NUMBER"],
        "factor": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.5}],
        "seed": ["INT", {"default": 0, "min": 0, "max": 2**32}],
        "mode": [["mul", "div"], {"default": "mul"}],
    }
    assert scale["input"]["optional"] == {"exact": ["BOOLEAN", {"default": False}]}
    assert scale["input_order"] == {"required": ["x", "factor", "seed", "mode"], "optional": ["exact"]}
    assert scale["output"] == ["NUMBER"]
    assert scale["output_name"] == ["scaled"]
    assert scale["output_is_list"] == [False]
    assert scale["name"] == "Scale"
    assert scale["display_name"] == "Scale a number"
    assert scale["description"] == "x * factor + seed"
    assert scale["category"] == "genserve"
    assert scale["output_node"] is False
    collect = info["Collect"]
    assert collect["output_node"] is True
    assert collect["output"] == [] and collect["output_name"] == []
    assert collect["input"]["optional"]["label"] == ["STRING", {"default": "", "multiline": True}]
    assert info["Number"]["display_name"] == "Number"  # no title: the class name, as ComfyUI does
    json.dumps(info)  # the body goes on the wire as is


def test_object_info_for_one_type_and_unknown_type(registry: NodeRegistry) -> None:
    assert list(registry.object_info("Add")) == ["Add"]
    with pytest.raises(GenserveError) as excinfo:
        registry.object_info("Nope")
    assert excinfo.value.code is ErrorCode.NOT_FOUND


def test_registry_refuses_a_second_type_under_one_name() -> None:
    registry = NodeRegistry([NUMBER])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(NUMBER)
    assert "Number" in registry and len(registry) == 1
    assert registry.get("Nope") is None
    assert registry.names() == ["Number"]


def test_declarations_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="return names"):
        NodeType("Bad", lambda ctx: (), return_types=("A",), return_names=("a", "b"))
    with pytest.raises(ValueError, match="both required and optional"):
        NodeType("Bad", lambda ctx, x: (), required={"x": Int()}, optional={"x": Int()})


def test_call_checks_the_number_of_outputs() -> None:
    ctx = NodeContext("p", "1", "Scale")
    assert SCALE.call(ctx, {"x": 2.0, "factor": 3.0, "seed": 1, "mode": "mul"}) == NodeResult((7.0,))
    liar = NodeType("Liar", lambda ctx: (1, 2), return_types=("NUMBER",))
    with pytest.raises(GenserveError, match="returned 2 outputs, declared 1"):
        liar.call(ctx, {})
    assert COLLECT.call(ctx, {"values": 1.0}).ui == {"values": [1.0], "label": [""]}


def test_context_cancellation_and_progress() -> None:
    seen: list[tuple[int, int]] = []
    ctx = NodeContext("p", "1", "X", progress_sink=lambda step, total: seen.append((step, total)))
    ctx.progress(1, 2)
    ctx.check_cancelled()
    ctx.cancel_event.set()
    assert ctx.cancelled
    with pytest.raises(GenserveError) as excinfo:
        ctx.check_cancelled()
    assert excinfo.value.code is ErrorCode.CANCELLED
    assert seen == [(1, 2)]
