"""Graph parsing: every problem reported at once, pruning to what outputs need, order, cache keys."""

from __future__ import annotations

from typing import Any

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.graph import GraphValidationError, Link, cache_keys, node_errors, parse_graph
from genserve.workflows.inputs import Linked, String
from genserve.workflows.nodes.base import NodeRegistry, NodeType
from tests.unit.workflows.conftest import ALL_TYPES, chain


def _problems(data: Any, registry: NodeRegistry) -> list[tuple[str | None, str | None, str | None, str]]:
    with pytest.raises(GraphValidationError) as excinfo:
        parse_graph(data, registry)
    assert excinfo.value.code is ErrorCode.INVALID_INPUT
    return [(p.node_id, p.class_type, p.input_name, p.kind) for p in excinfo.value.problems]


def test_a_good_graph_is_parsed_with_coerced_values_and_links(registry: NodeRegistry) -> None:
    graph = parse_graph(chain(seed=5), registry)
    assert graph.order == ("1", "2", "3", "4")
    assert graph.output_ids == ("4",)
    scale = graph.nodes["3"]
    assert scale.title == "Scale it"
    assert graph.nodes["1"].title == "Number"
    assert scale.values == {"factor": 3.0, "seed": 5, "mode": "mul"}
    assert isinstance(scale.values["factor"], float)
    assert scale.links == {"x": Link("2", 0)}


def test_every_kind_of_problem_is_reported_together_naming_node_and_input(registry: NodeRegistry) -> None:
    data = {
        "1": {"class_type": "Number", "inputs": {"value": 5000}},  # above max
        "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": "lots", "seed": -1, "mode": "pow"}},
        "3": {"class_type": "Add", "inputs": {"a": ["99", 0]}},  # missing b, link to a missing node
        "4": {"class_type": "Add", "inputs": {"a": ["1", 3], "b": ["5", 1]}},  # bad index; TEXT into NUMBER
        "5": {"class_type": "Pair", "inputs": {"value": 1}},
        "6": {"class_type": "Warp", "inputs": {}},  # unknown class
        "7": {
            "class_type": "Collect",
            "inputs": {"values": ["2", 0], "extra": 1.5},
        },  # value for a link input
        "8": {"class_type": "Collect", "inputs": {"values": ["3", 0], "label": ["6", 0]}},
        "9": {"class_type": "Collect", "inputs": {"values": ["4", 0]}},
    }
    found = _problems(data, registry)
    assert found == [
        ("6", "Warp", None, "missing_node_type"),
        ("1", "Number", "value", "value_bigger_than_max"),
        ("2", "Scale", "factor", "invalid_input_type"),
        ("2", "Scale", "seed", "value_smaller_than_min"),
        ("2", "Scale", "mode", "value_not_in_list"),
        ("3", "Add", "b", "required_input_missing"),
        ("3", "Add", "a", "bad_linked_input"),
        ("4", "Add", "a", "bad_linked_input"),
        ("4", "Add", "b", "return_type_mismatch"),
        ("7", "Collect", "extra", "invalid_input_type"),
    ]


def test_the_error_message_and_details_name_node_class_and_input(registry: NodeRegistry) -> None:
    data = chain()
    data["3"]["inputs"]["seed"] = "x"
    data["2"]["inputs"]["x"] = ["4", 0]  # Collect has no outputs
    with pytest.raises(GenserveError) as excinfo:
        parse_graph(data, registry)
    error = excinfo.value
    assert error.code is ErrorCode.INVALID_INPUT
    assert "2 problems" in error.message
    assert (
        "node 2 (SlowSteps), input 'x': links to output 0 of node 4 (Collect), which has 0 output(s)"
        in error.message
    )
    assert "node 3 (Scale), input 'seed': expected an integer" in error.message
    assert error.details["problems"][1] == {
        "type": "invalid_input_type",
        "message": "expected an integer, got 'x'",
        "node_id": "3",
        "class_type": "Scale",
        "input_name": "seed",
    }
    assert error.to_dict()["details"]["problems"]  # JSON for the doors


def test_node_errors_has_comfyui_shape(registry: NodeRegistry) -> None:
    data = chain()
    data["3"]["inputs"]["mode"] = "pow"
    with pytest.raises(GraphValidationError) as excinfo:
        parse_graph(data, registry)
    errors = node_errors(excinfo.value.problems)
    assert errors == {
        "3": {
            "errors": [
                {
                    "type": "value_not_in_list",
                    "message": "'pow' is not one of: mul, div",
                    "details": "node 3 (Scale), input 'mode': 'pow' is not one of: mul, div",
                    "extra_info": {"input_name": "mode"},
                }
            ],
            "dependent_outputs": [],
            "class_type": "Scale",
        }
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], [(None, None, None, "invalid_prompt")]),
        ({}, [(None, None, None, "invalid_prompt")]),
        ({"1": {"inputs": {}}}, [("1", None, None, "invalid_prompt")]),
        ({"1": {"class_type": "Number", "inputs": 3}}, [("1", "Number", None, "invalid_prompt")]),
        ({"1": {"class_type": "Number", "inputs": {"value": 1}}}, [(None, None, None, "prompt_no_outputs")]),
    ],
)
def test_malformed_graphs(registry: NodeRegistry, data: Any, expected: list[Any]) -> None:
    assert _problems(data, registry) == expected


def test_cycles_are_reported_for_the_nodes_on_them(registry: NodeRegistry) -> None:
    data = {
        "1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["3", 0]}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["1", 0]}},
        "4": {"class_type": "Collect", "inputs": {"values": ["3", 0]}},
    }
    assert _problems(data, registry) == [
        ("2", "Add", None, "dependency_cycle"),
        ("3", "Add", None, "dependency_cycle"),
    ]


def test_nodes_no_output_needs_are_pruned_and_not_validated(registry: NodeRegistry) -> None:
    data = chain()
    data["20"] = {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 99}}  # broken but unused
    data["21"] = {"class_type": "Number", "inputs": {"value": 1}}
    graph = parse_graph(data, registry)
    assert graph.order == ("1", "2", "3", "4")


def test_unknown_class_is_an_error_even_when_unused(registry: NodeRegistry) -> None:
    data = chain()
    data["20"] = {"class_type": "Warp", "inputs": {}}
    assert _problems(data, registry) == [("20", "Warp", None, "missing_node_type")]


def test_a_comfy_org_api_node_is_named_as_one(registry: NodeRegistry) -> None:
    data = chain()
    data["20"] = {"class_type": "QwenImageEditApi", "inputs": {}}
    with pytest.raises(GraphValidationError) as excinfo:
        parse_graph(data, registry)
    [problem] = excinfo.value.problems
    assert problem.kind == "missing_node_type" and "comfy.org API node" in problem.message
    assert "cloud" in problem.message and "QwenImageEditApi" in problem.message


def test_chosen_outputs_limit_the_graph(registry: NodeRegistry) -> None:
    data = chain()
    data["5"] = {"class_type": "Collect", "inputs": {"values": ["1", 0]}}
    assert parse_graph(data, registry).output_ids == ("4", "5")
    graph = parse_graph(data, registry, outputs=["5"])
    assert graph.order == ("1", "5")
    with pytest.raises(GraphValidationError, match="requested output node does not exist"):
        parse_graph(data, registry, outputs=["77"])


def test_order_puts_every_node_after_its_inputs_and_ties_by_numeric_id(registry: NodeRegistry) -> None:
    data = {
        "10": {"class_type": "Collect", "inputs": {"values": ["9", 0], "extra": ["2", 0]}},
        "9": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["11", 0]}},
        "11": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Number", "inputs": {"value": 2}},
    }
    assert parse_graph(data, registry).order == ("2", "11", "9", "10")


def test_undeclared_inputs_are_ignored(registry: NodeRegistry) -> None:
    data = chain()
    data["1"]["inputs"]["widget_leftover"] = "whatever"
    assert parse_graph(data, registry).nodes["1"].values == {"value": 2.0}


def test_a_widget_input_may_be_fed_by_a_link_of_its_type() -> None:
    number_int = NodeType("SeedSource", lambda ctx: (7,), return_types=("INT",))
    registry = NodeRegistry([*ALL_TYPES, number_int])
    data = chain()
    data["9"] = {"class_type": "SeedSource", "inputs": {}}
    data["3"]["inputs"]["seed"] = ["9", 0]
    assert parse_graph(data, registry).nodes["3"].links["seed"] == Link("9", 0)
    data["3"]["inputs"]["seed"] = ["1", 0]  # NUMBER into INT
    assert _problems(data, registry) == [("3", "Scale", "seed", "return_type_mismatch")]


def _digests(data: dict[str, Any], registry: NodeRegistry, nonce: str = "n") -> dict[str, str]:
    return {k: v.digest for k, v in cache_keys(parse_graph(data, registry), nonce).items()}


def test_cache_keys_change_downstream_of_a_change_only(registry: NodeRegistry) -> None:
    first = _digests(chain(seed=1), registry)
    seed_changed = _digests(chain(seed=2), registry)
    assert [first[n] == seed_changed[n] for n in ("1", "2", "3", "4")] == [True, True, False, False]
    value_changed = _digests(chain(value=3.0), registry)
    assert all(first[n] != value_changed[n] for n in ("1", "2", "3", "4"))
    assert _digests(chain(seed=1), registry, nonce="other") == first  # the nonce only touches volatile nodes


def test_cache_keys_do_not_depend_on_node_ids(registry: NodeRegistry) -> None:
    first = _digests(chain(), registry)
    renamed = _digests(chain(ids=("a", "17", "x9", "out")), registry)
    assert [first[n] for n in ("1", "2", "3", "4")] == [renamed[n] for n in ("a", "17", "x9", "out")]


def test_cache_keys_tell_outputs_of_one_node_apart(registry: NodeRegistry) -> None:
    data = {
        "1": {"class_type": "Pair", "inputs": {"value": 1}},
        "2": {"class_type": "Collect", "inputs": {"values": ["1", 0]}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}},
        "4": {"class_type": "Collect", "inputs": {"values": ["3", 0]}},
    }
    keys = _digests(data, registry)
    assert keys["2"] != keys["4"]


def test_not_cacheable_nodes_make_themselves_and_their_readers_volatile(registry: NodeRegistry) -> None:
    data = {
        "1": {"class_type": "Random", "inputs": {}},
        "2": {"class_type": "Collect", "inputs": {"values": ["1", 0]}},
        "3": {"class_type": "Number", "inputs": {"value": 1}},
        "4": {"class_type": "Collect", "inputs": {"values": ["3", 0]}},
    }
    graph = parse_graph(data, registry)
    one, two = cache_keys(graph, "run-1"), cache_keys(graph, "run-2")
    assert [one[n].volatile for n in "1234"] == [True, True, False, False]
    assert one["1"].digest != two["1"].digest and one["2"].digest != two["2"].digest
    assert one["4"] == two["4"]


def test_fingerprint_joins_the_key_and_its_failure_names_the_node() -> None:
    stamp = {"v": "a"}

    def fingerprint(text: str) -> str:
        if text == "missing":
            raise FileNotFoundError(text)
        return stamp["v"]

    load = NodeType(
        "LoadText",
        lambda ctx, text: (text,),
        required={"text": String()},
        return_types=("TEXT",),
        fingerprint=fingerprint,
    )
    show = NodeType("ShowText", lambda ctx, t: (), required={"t": Linked("TEXT")}, output_node=True)
    registry = NodeRegistry([load, show])
    data = {
        "1": {"class_type": "LoadText", "inputs": {"text": "f"}},
        "2": {"class_type": "ShowText", "inputs": {"t": ["1", 0]}},
    }
    before = _digests(data, registry)
    stamp["v"] = "b"
    assert _digests(data, registry)["1"] != before["1"]
    data["1"]["inputs"]["text"] = "missing"
    with pytest.raises(GraphValidationError, match=r"node 1 \(LoadText\): cannot read its inputs"):
        _digests(data, registry)


def test_a_link_to_an_input_the_node_lacks_is_refused_naming_it(registry: NodeRegistry) -> None:
    """A constant the node does not take is a UI leftover and ignored (above); a link carries data
    the workflow means to use, so running without it would change the result: refused."""
    data = chain()
    data["3"]["inputs"]["video"] = ["1", 0]
    assert _problems(data, registry) == [("3", "Scale", "video", "bad_linked_input")]
