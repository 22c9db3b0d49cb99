"""Subgraphs in UI-format workflows flattened as ComfyUI's frontend flattens them: ComfyUI's ids,
values from the instance or the inner widget, nesting, chained and bypassed instances."""

from __future__ import annotations

import json
from typing import Any

from genserve.workflows.ui_format import ui_to_api
from tests.unit.workflows.ui_graphs import chain, node, object_info

SUBGRAPH_ID = "0c0ffee0-0000-4000-8000-000000000001"


def subgraph(inner_sampler_values: list[Any]) -> dict[str, Any]:
    """Inputs: model (MODEL), steps (INT widget), latent (LATENT); output: the sampler's LATENT."""
    return {
        "id": SUBGRAPH_ID,
        "name": "Sample",
        "inputs": [
            {"name": "model", "type": "MODEL", "linkIds": [21]},
            {"name": "steps", "type": "INT", "linkIds": [22]},
            {"name": "latent", "type": "LATENT", "linkIds": [23]},
        ],
        "outputs": [{"name": "LATENT", "type": "LATENT", "linkIds": [24]}],
        "nodes": [
            node(
                7,
                "Sampler",
                inner_sampler_values,
                inputs=[("model", "MODEL", 21), ("steps", "INT", 22), ("latent", "LATENT", 23)],
                outputs=[("LATENT", [24])],
            )
        ],
        "links": [
            {"id": 21, "origin_id": -10, "origin_slot": 0, "target_id": 7, "target_slot": 0, "type": "MODEL"},
            {"id": 22, "origin_id": -10, "origin_slot": 1, "target_id": 7, "target_slot": 1, "type": "INT"},
            {
                "id": 23,
                "origin_id": -10,
                "origin_slot": 2,
                "target_id": 7,
                "target_slot": 2,
                "type": "LATENT",
            },
            {
                "id": 24,
                "origin_id": 7,
                "origin_slot": 0,
                "target_id": -20,
                "target_slot": 0,
                "type": "LATENT",
            },
        ],
    }


def with_subgraph(instance_values: list[Any], inner_values: list[Any]) -> dict[str, Any]:
    """chain() with its sampler (node 3) replaced by an instance of the subgraph."""
    flow = chain()
    flow["nodes"][2] = node(
        3,
        SUBGRAPH_ID,
        instance_values,
        inputs=[("model", "MODEL", 1), ("latent", "LATENT", 2), ("steps", "INT", None)],
        outputs=[("LATENT", [3])],
    )
    flow["links"][1][4] = 1
    flow["definitions"] = {"subgraphs": [subgraph(inner_values)]}
    return flow


def test_subgraph_is_flattened_with_comfyui_ids_and_instance_widget_values() -> None:
    api = ui_to_api(with_subgraph([30], [5, "fixed", 10, 1.5]), object_info)
    assert set(api) == {"1", "2", "3:7", "4", "5"}
    assert api["3:7"] == {
        "inputs": {"seed": 5, "steps": 30, "cfg": 1.5, "model": ["1", 0], "latent": ["2", 0]},
        "class_type": "Sampler",
        "_meta": {"title": "Sampler"},
    }
    assert api["4"]["inputs"]["samples"] == ["3:7", 0]


def test_subgraph_input_without_a_saved_value_keeps_the_inner_widget_value() -> None:
    api = ui_to_api(with_subgraph([], [5, "fixed", 10, 1.5]), object_info)
    assert api["3:7"]["inputs"]["steps"] == 10


def test_nested_subgraphs_get_nested_ids() -> None:
    outer_id = "0c0ffee0-0000-4000-8000-000000000002"
    flow = with_subgraph([30], [5, "fixed", 10, 1.5])
    inner = flow["definitions"]["subgraphs"][0]
    outer = json.loads(json.dumps(inner))
    outer["id"] = outer_id
    outer["nodes"][0]["type"] = SUBGRAPH_ID  # the outer definition holds an instance of the inner one
    outer["nodes"][0]["widgets_values"] = []
    flow["definitions"]["subgraphs"].append(outer)
    flow["nodes"][2]["type"] = outer_id
    api = ui_to_api(flow, object_info)
    assert api["3:7:7"]["inputs"] == {
        "seed": 5,
        "steps": 30,
        "cfg": 1.5,
        "model": ["1", 0],
        "latent": ["2", 0],
    }
    assert api["4"]["inputs"]["samples"] == ["3:7:7", 0]


def test_two_chained_instances_of_one_subgraph_are_two_places_not_a_cycle() -> None:
    flow = with_subgraph([30], [5, "fixed", 10, 1.5])
    second = node(
        12,
        SUBGRAPH_ID,
        [6],
        inputs=[("model", "MODEL", 30), ("latent", "LATENT", 31)],
        outputs=[("LATENT", [32])],
    )
    flow["nodes"].append(second)
    flow["nodes"][3]["inputs"][0]["link"] = 32
    flow["links"] += [[30, 1, 0, 12, 0, "MODEL"], [31, 3, 0, 12, 1, "LATENT"], [32, 12, 0, 4, 0, "LATENT"]]
    api = ui_to_api(flow, object_info)
    assert api["12:7"]["inputs"]["latent"] == ["3:7", 0]
    assert api["12:7"]["inputs"]["steps"] == 6
    assert api["4"]["inputs"]["samples"] == ["12:7", 0]


def test_bypassed_subgraph_instance_passes_its_input_through() -> None:
    flow = with_subgraph([30], [5, "fixed", 10, 1.5])
    flow["nodes"][2]["mode"] = 4
    api = ui_to_api(flow, object_info)
    assert not any(key.startswith("3:") for key in api)
    assert api["4"]["inputs"]["samples"] == ["2", 0]
