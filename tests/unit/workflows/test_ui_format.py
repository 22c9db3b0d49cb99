"""UI-format workflows converted to API format by the frontend's graph-to-prompt rules: widgets,
links, reroutes, primitives, muted and bypassed nodes, errors, and the official Qwen templates.

Node types are given as ComfyUI's ``/object_info`` entries (tests/unit/workflows/ui_graphs.py), so
each test states exactly which widgets a type has and in which order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genserve.workflows.graph import parse_graph
from genserve.workflows.nodes.builtin import pipeline_registry
from genserve.workflows.ui_format import UIWorkflowError, is_ui_workflow, registry_object_info, ui_to_api
from tests.unit.workflows.ui_graphs import chain, node, object_info, workflow


def test_links_widgets_and_seed_control_become_the_exact_api_prompt() -> None:
    assert ui_to_api(chain(), object_info) == {
        "1": {"inputs": {"ckpt": "b.safetensors"}, "class_type": "Loader", "_meta": {"title": "Load Model"}},
        "2": {"inputs": {"width": 640, "height": 480}, "class_type": "Empty", "_meta": {"title": "Empty"}},
        "3": {
            "inputs": {"seed": 42, "steps": 8, "cfg": 2.5, "model": ["1", 0], "latent": ["2", 0]},
            "class_type": "Sampler",
            "_meta": {"title": "Sampler"},
        },
        "4": {
            "inputs": {"samples": ["3", 0], "model": ["1", 0]},
            "class_type": "Decode",
            "_meta": {"title": "Decode"},
        },
        "5": {
            "inputs": {"prefix": "cat", "images": ["4", 0]},
            "class_type": "Save",
            "_meta": {"title": "Final"},
        },
    }


def test_version_1_link_objects_read_like_lists() -> None:
    flow = chain()
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    flow["links"] = [dict(zip(keys, link, strict=True)) for link in flow["links"]]
    flow["version"] = 1
    assert ui_to_api(flow, object_info) == ui_to_api(chain(), object_info)


def test_muted_node_is_dropped_with_the_inputs_that_read_it() -> None:
    api = ui_to_api(chain(middle_mode=2), object_info)
    assert "3" not in api
    assert api["4"]["inputs"] == {"model": ["1", 0]}


def test_bypassed_node_hands_its_matching_type_input_to_readers() -> None:
    api = ui_to_api(chain(middle_mode=4), object_info)
    assert "3" not in api
    # Decode's LATENT came from the bypassed sampler: it now reads the sampler's LATENT input.
    assert api["4"]["inputs"] == {"samples": ["2", 0], "model": ["1", 0]}


def test_reroute_is_followed_through() -> None:
    flow = chain()
    flow["nodes"].append(node(8, "Reroute", None, inputs=[("", "*", 6)], outputs=[("*", [7])]))
    flow["links"] += [[6, 4, 0, 8, 0, "IMAGE"], [7, 8, 0, 5, 0, "IMAGE"]]
    flow["nodes"][4]["inputs"][0]["link"] = 7
    api = ui_to_api(flow, object_info)
    assert "8" not in api
    assert api["5"]["inputs"]["images"] == ["4", 0]


def test_primitive_node_pushes_its_value_into_the_widget_it_feeds() -> None:
    flow = chain()
    flow["nodes"].append(node(9, "PrimitiveNode", [1234, "fixed"], outputs=[("INT", [8])]))
    flow["nodes"][2]["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 8})
    flow["links"].append([8, 9, 0, 3, 2, "INT"])
    api = ui_to_api(flow, object_info)
    assert "9" not in api
    assert api["3"]["inputs"]["seed"] == 1234


def test_set_and_get_nodes_join_by_name() -> None:
    flow = chain()
    flow["nodes"] += [
        node(10, "SetNode", ["model"], inputs=[("MODEL", "MODEL", 9)], outputs=[("*", [])]),
        node(11, "GetNode", ["model"], outputs=[("MODEL", [10])]),
    ]
    flow["links"] += [[9, 1, 0, 10, 0, "MODEL"], [10, 11, 0, 4, 1, "MODEL"]]
    flow["nodes"][3]["inputs"][1]["link"] = 10
    api = ui_to_api(flow, object_info)
    assert {"10", "11"}.isdisjoint(api)
    assert api["4"]["inputs"]["model"] == ["1", 0]


@pytest.mark.parametrize(
    ("kind", "values", "expected"),
    [
        ("LoadImage", ["y.png", "image"], {"image": "y.png"}),
        ("Noise", [5, "fixed", 0.5], {"noise_seed": 5, "strength": 0.5}),
        ("FixedSeed", [5, 6], {"seed": 5, "n": 6}),
        ("Picker", ["q", "increment", 3], {"choice": "q", "k": 3}),
        ("Forced", [4], {"n": 4}),
        ("Sampler", [9], {"seed": 9, "steps": 20, "cfg": 7.0}),  # missing values: the defaults
        ("Sampler", None, {"seed": 0, "steps": 20, "cfg": 7.0}),
        ("Save", {"prefix": "by-name"}, {"prefix": "by-name"}),
        (
            "Generate",
            ["on", 0.5, 7, True],
            {"mode": "on", "mode.temperature": 0.5, "mode.seed": 7, "thinking": True},
        ),
        ("Generate", ["off", True], {"mode": "off", "thinking": True}),
    ],
)
def test_widget_values_are_named_by_object_info_order(
    kind: str, values: Any, expected: dict[str, Any]
) -> None:
    api = ui_to_api(workflow([node(1, kind, values)], []), object_info)
    assert api["1"]["inputs"] == expected


def test_list_values_are_wrapped_as_the_frontend_wraps_them() -> None:
    api = ui_to_api(workflow([node(1, "Save", [["a", "b"]])], []), object_info)
    assert api["1"]["inputs"] == {"prefix": {"__value__": ["a", "b"]}}


def test_unknown_node_types_are_kept_with_their_links_for_validation_to_name() -> None:
    flow = chain()
    flow["nodes"][3]["type"] = "NotAType"
    api = ui_to_api(flow, object_info)
    assert api["4"] == {
        "inputs": {"samples": ["3", 0], "model": ["1", 0]},
        "class_type": "NotAType",
        "_meta": {"title": "NotAType"},
    }


@pytest.mark.parametrize(
    "broken",
    [
        {"nodes": [{"id": 1}], "links": []},
        {"nodes": [], "links": [["x"]]},
        {"nodes": [node(1, "Save", [], inputs=[("images", "IMAGE", 99)])], "links": []},
        {"nodes": "no", "links": []},
    ],
)
def test_a_broken_ui_workflow_is_one_error_saying_to_export_it(broken: dict[str, Any]) -> None:
    with pytest.raises(UIWorkflowError) as caught:
        ui_to_api(broken, object_info)
    assert 'export it with "Save (API)"' in caught.value.message
    assert caught.value.reason


def test_detection_tells_ui_from_api_format() -> None:
    assert is_ui_workflow(chain())
    assert not is_ui_workflow({"3": {"class_type": "KSampler", "inputs": {}}})
    assert not is_ui_workflow({"nodes": {"1": {}}, "links": []})


def _qwen_templates() -> list[Path]:
    templates = pytest.importorskip("comfyui_workflow_templates_json")
    folder = Path(templates.__file__).parent / "templates"
    return sorted(p for p in folder.glob("*.json") if "qwen" in p.name.lower())


def test_every_official_qwen_template_converts() -> None:
    paths = _qwen_templates()
    assert len(paths) == 31
    lookup = registry_object_info(pipeline_registry())
    for path in paths:
        api = ui_to_api(json.loads(path.read_text(encoding="utf-8")), lookup)
        assert api, path.name
        assert all("class_type" in n and isinstance(n["inputs"], dict) for n in api.values()), path.name


def test_a_reroute_cycle_is_one_error() -> None:
    flow = workflow(
        [
            node(1, "Reroute", None, inputs=[("", "*", 2)], outputs=[("*", [1])]),
            node(2, "Reroute", None, inputs=[("", "*", 1)], outputs=[("*", [2, 3])]),
            node(3, "Save", ["x"], inputs=[("images", "IMAGE", 3)]),
        ],
        [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 2, 0, 3, 0, "IMAGE"]],
    )
    with pytest.raises(UIWorkflowError, match="circular"):
        ui_to_api(flow, object_info)


def test_an_input_saved_as_a_plain_socket_holds_no_widget_value() -> None:
    """The ComfyUI that saved the node declared ``steps`` link-only: its values skip it."""
    sampler = node(1, "Sampler", [5, "fixed", 1.5])
    sampler["inputs"].append({"name": "steps", "type": "INT", "link": None})
    assert ui_to_api(workflow([sampler], []), object_info)["1"]["inputs"] == {"seed": 5, "cfg": 1.5}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (  # as audio_stable_audio_3_medium.json saves it
            ["A fox.", 256, "on", 0.7, 64, 0.95, 0.05, 1.05, 3, 0.5, False, True],
            {
                "sampling_mode": "on",
                "sampling_mode.temperature": 0.7,
                "sampling_mode.top_k": 64,
                "sampling_mode.top_p": 0.95,
                "sampling_mode.min_p": 0.05,
                "sampling_mode.repetition_penalty": 1.05,
                "sampling_mode.seed": 3,
                "sampling_mode.presence_penalty": 0.5,
                "thinking": False,
                "use_default_template": True,
            },
        ),
        (
            ["A fox.", 256, "off", True, False],
            {"sampling_mode": "off", "thinking": True, "use_default_template": False},
        ),
    ],
)
def test_text_generate_sampling_mode_values_reach_their_inputs(
    values: list[Any], expected: dict[str, Any]
) -> None:
    """``sampling_mode`` is a V3 dynamic combo: "off" has no widgets of its own, so the values
    after it are ``thinking`` and ``use_default_template``, not temperature and top_k."""
    registry = pipeline_registry()
    generate = node(2, "TextGenerate", values, inputs=[("clip", "CLIP", 1)], outputs=[("STRING", [2])])
    flow = workflow(
        [
            node(1, "CLIPLoader", ["demo-llm", "stable_diffusion", "default"], outputs=[("CLIP", [1])]),
            generate,
            node(3, "PreviewAny", None, inputs=[("source", "*", 2)]),
        ],
        [[1, 1, 0, 2, 0, "CLIP"], [2, 2, 0, 3, 0, "STRING"]],
    )
    api = ui_to_api(flow, registry_object_info(registry))
    expected = {**expected, "mtp": "auto"}  # saved before TextGenerate had mtp: its default
    assert api["2"]["inputs"] == {"prompt": "A fox.", "max_length": 256, **expected, "clip": ["1", 0]}
    assert parse_graph(api, registry).nodes["2"].values == {"prompt": "A fox.", "max_length": 256, **expected}
