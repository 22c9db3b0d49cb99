"""Workflow catalog: aliases, /workflow-info's shape, building with type checks, load problems, reload."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from genserve.bridge.aliases import WorkflowCatalog
from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.inputs import Combo
from genserve.workflows.nodes.base import NodeRegistry, NodeType
from tests.unit.workflows.conftest import COLLECT


def toy_graph() -> dict[str, Any]:
    return {
        "1": {"class_type": "Number", "inputs": {"value": 2.0}},
        "2": {
            "class_type": "Scale",
            "inputs": {"x": ["1", 0], "factor": 3, "seed": 7, "mode": "mul", "exact": False},
            "_meta": {"title": "Scale it"},
        },
        "3": {"class_type": "Collect", "inputs": {"values": ["2", 0], "label": "a cat"}},
    }


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def bump(path: Path) -> None:
    """Move the mtime forward so a reload is seen even on coarse-mtime file systems."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "workflows"
    write(folder / "toy.json", toy_graph())
    return folder


ALIASES = {
    "toy": {
        "file": "toy.json",
        "inputs": ["3/label", "2/seed", "2/factor", "2/mode", "2/exact", "1/value"],
    }
}


def make(
    folder: Path, registry: NodeRegistry, aliases: Any = None, name: str = "aliases.json"
) -> WorkflowCatalog:
    alias_file = folder.parent / name
    text = aliases if isinstance(aliases, str) else json.dumps(ALIASES if aliases is None else aliases)
    alias_file.write_text(text)
    return WorkflowCatalog(folder, alias_file, registry)


def test_list_and_info_shape(folder: Path, registry: NodeRegistry) -> None:
    catalog = make(folder, registry)
    assert catalog.aliases() == ["toy"]
    info = catalog.info("toy")
    assert list(info) == ["3/label", "2/seed", "2/factor", "2/mode", "2/exact", "1/value"]
    # no _meta title: the node type's display name (Collect has none, so its class name)
    assert info["3/label"] == {"type": "str", "title": "Collect", "class": "Collect", "default": "a cat"}
    assert info["2/seed"] == {"type": "int", "title": "Scale it", "class": "Scale", "default": 7}
    assert info["2/factor"]["type"] == "float"
    assert info["2/mode"]["type"] == "str"  # combo
    assert info["2/exact"]["type"] == "bool"
    assert info["1/value"]["title"] == "Number"


def test_display_name_and_admin_override(folder: Path, registry: NodeRegistry) -> None:
    graph = toy_graph()
    del graph["2"]["_meta"]
    write(folder / "plain.json", graph)
    aliases = {
        "plain": {
            "file": "plain.json",
            "inputs": {"2/seed": None, "3/label": {"title": "Prompt", "description": "what to draw"}},
        }
    }
    info = make(folder, registry, aliases).info("plain")
    assert info["2/seed"]["title"] == "Scale a number"
    assert info["3/label"] == {
        "type": "str",
        "title": "Prompt",
        "class": "Collect",
        "default": "a cat",
        "description": "what to draw",
    }


def test_yaml_alias_file(folder: Path, registry: NodeRegistry) -> None:
    text = "toy:\n  file: toy.json\n  inputs:\n    - 2/seed\n"
    catalog = make(folder, registry, text, name="aliases.yaml")
    assert catalog.info("toy") == {
        "2/seed": {"type": "int", "title": "Scale it", "class": "Scale", "default": 7}
    }


def test_build_sets_values_on_a_copy(folder: Path, registry: NodeRegistry) -> None:
    catalog = make(folder, registry)
    built = catalog.build("toy", {"2/seed": 1234, "3/label": "the awesome cat", "2/factor": 2})
    assert built["2"]["inputs"]["seed"] == 1234
    assert built["2"]["inputs"]["factor"] == 2
    assert built["3"]["inputs"]["label"] == "the awesome cat"
    assert built["2"]["inputs"]["x"] == ["1", 0]
    built["2"]["inputs"]["seed"] = 5  # the catalog's own graph is untouched
    assert catalog.build("toy", {})["2"]["inputs"]["seed"] == 7


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("2/seed", "12"),
        ("2/seed", True),
        ("2/seed", 1.5),
        ("2/factor", "2"),
        ("2/factor", False),
        ("3/label", 3),
        ("2/exact", 1),
        ("2/mode", None),
    ],
)
def test_build_refuses_wrong_types(folder: Path, registry: NodeRegistry, key: str, value: Any) -> None:
    with pytest.raises(GenserveError) as info:
        make(folder, registry).build("toy", {key: value})
    assert info.value.code is ErrorCode.INVALID_INPUT
    assert key in info.value.message


def test_build_refuses_unexposed_keys_and_unknown_aliases(folder: Path, registry: NodeRegistry) -> None:
    catalog = make(folder, registry, {"toy": {"file": "toy.json", "inputs": ["2/seed"]}})
    with pytest.raises(GenserveError, match="3/label") as info:
        catalog.build("toy", {"3/label": "x"})
    assert info.value.code is ErrorCode.INVALID_INPUT
    with pytest.raises(GenserveError, match="nope") as info:
        catalog.build("nope", {})
    assert info.value.code is ErrorCode.INVALID_INPUT
    with pytest.raises(GenserveError, match="nope"):
        catalog.info("nope")


@pytest.mark.parametrize(("key", "value"), [("2/seed", -1), ("2/factor", 11.0), ("2/mode", "pow")])
def test_build_validates_the_graph(folder: Path, registry: NodeRegistry, key: str, value: Any) -> None:
    with pytest.raises(GenserveError) as info:
        make(folder, registry).build("toy", {key: value})
    assert info.value.code is ErrorCode.INVALID_INPUT
    assert key.split("/")[1] in info.value.message and "toy" in info.value.message


def test_broken_aliases_are_left_out_with_reasons(
    folder: Path, registry: NodeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    write(folder / "bad.json", "{not json")
    bad_graph = toy_graph()
    bad_graph["2"]["class_type"] = "Nope"
    write(folder / "unknown_node.json", bad_graph)
    outside = folder.parent / "outside.json"
    write(outside, toy_graph())
    aliases = {
        "good": {"file": "toy.json", "inputs": ["2/seed"]},
        "missing": {"file": "missing.json", "inputs": []},
        "not-json": {"file": "bad.json", "inputs": []},
        "no-node": {"file": "toy.json", "inputs": ["9/seed"]},
        "no-input": {"file": "toy.json", "inputs": ["2/colour"]},
        "link": {"file": "toy.json", "inputs": ["2/x"]},
        "bad-key": {"file": "toy.json", "inputs": ["seed"]},
        "escape": {"file": "../outside.json", "inputs": []},
        "absolute": {"file": str(outside), "inputs": []},
        "unknown-node": {"file": "unknown_node.json", "inputs": []},
    }
    catalog = make(folder, registry, aliases)
    assert catalog.aliases() == ["good"]
    problems = catalog.problems()
    assert set(problems) == set(aliases) - {"good"}
    assert "does not exist" in problems["missing"]
    assert "not JSON" in problems["not-json"]
    assert "no node 9" in problems["no-node"]
    assert "colour" in problems["no-input"]
    assert "link" in problems["link"]
    assert "out of the workflows folder" in problems["escape"]
    assert "relative" in problems["absolute"]
    assert "Nope" in problems["unknown-node"]
    assert "left out" in caplog.text
    with pytest.raises(GenserveError, match=r"unavailable: .*no node 9"):
        catalog.info("no-node")


def test_default_missing_from_a_combo_is_only_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file-backed combo (LoadImage's uploads) may lack the workflow's example file on this host."""
    uploads: list[str] = ["mine.png"]
    pick = NodeType(
        "Pick",
        lambda ctx, image: (0.0,),
        required={"image": Combo(lambda: uploads)},
        return_types=("NUMBER",),
    )
    registry = NodeRegistry([pick, COLLECT])
    folder = tmp_path / "wf"
    graph = {
        "1": {"class_type": "Pick", "inputs": {"image": "example.png"}},
        "2": {"class_type": "Collect", "inputs": {"values": ["1", 0]}},
    }
    write(folder / "pick.json", graph)
    catalog = make(folder, registry, {"pick": {"file": "pick.json", "inputs": ["1/image"]}})
    assert catalog.aliases() == ["pick"]
    assert "example.png" in caplog.text
    assert catalog.build("pick", {"1/image": "mine.png"})["1"]["inputs"]["image"] == "mine.png"
    with pytest.raises(GenserveError, match=r"example\.png"):
        catalog.build("pick", {})
    uploads.append("example.png")
    assert catalog.build("pick", {})["1"]["inputs"]["image"] == "example.png"


def test_unreadable_alias_file_fails_start_up(folder: Path, registry: NodeRegistry) -> None:
    with pytest.raises(GenserveError, match="alias file"):
        make(folder, registry, "{oops")
    with pytest.raises(GenserveError, match="'file'"):
        make(folder, registry, {"toy": {"inputs": []}})


def test_missing_alias_file_is_an_empty_catalog(folder: Path, registry: NodeRegistry) -> None:
    catalog = WorkflowCatalog(folder, folder.parent / "absent.json", registry)
    assert catalog.aliases() == []
    (folder.parent / "absent.json").write_text(json.dumps(ALIASES))
    assert catalog.aliases() == ["toy"]


def test_reload_on_change(folder: Path, registry: NodeRegistry) -> None:
    catalog = make(folder, registry, {"toy": {"file": "toy.json", "inputs": ["2/seed"]}})
    assert catalog.info("toy")["2/seed"]["default"] == 7
    # the workflow file changes
    graph = toy_graph()
    graph["2"]["inputs"]["seed"] = 99
    bump(write(folder / "toy.json", graph))
    assert catalog.info("toy")["2/seed"]["default"] == 99
    # the alias file changes: a new alias pointing at a file that does not exist yet
    alias_file = folder.parent / "aliases.json"
    alias_file.write_text(json.dumps({**ALIASES, "later": {"file": "later.json", "inputs": ["2/seed"]}}))
    bump(alias_file)
    assert catalog.aliases() == ["toy"]
    assert "later" in catalog.problems()
    write(folder / "later.json", toy_graph())
    assert catalog.aliases() == ["toy", "later"]
    # a broken alias file later keeps the last good catalog
    alias_file.write_text("{broken")
    bump(alias_file)
    assert catalog.aliases() == ["toy", "later"]


def test_foreign_nodes(folder: Path, registry: NodeRegistry) -> None:
    graph = toy_graph()
    graph["4"] = {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 5, "cfg": 7.5, "on": True}}
    write(folder / "foreign.json", graph)
    aliases = {"f": {"file": "foreign.json", "inputs": ["4/noise_seed", "4/cfg", "4/on", "2/seed"]}}
    alias_file = folder.parent / "aliases.json"
    alias_file.write_text(json.dumps(aliases))
    assert WorkflowCatalog(folder, alias_file, registry).aliases() == []
    catalog = WorkflowCatalog(folder, alias_file, registry, foreign_nodes=True)
    info = catalog.info("f")
    assert [info[k]["type"] for k in info] == ["int", "float", "bool", "int"]
    assert info["4/cfg"]["title"] == "KSamplerAdvanced"
    assert catalog.build("f", {"4/noise_seed": 11})["4"]["inputs"]["noise_seed"] == 11
    with pytest.raises(GenserveError, match="4/cfg"):
        catalog.build("f", {"4/cfg": "high"})


def test_concurrent_use_while_reloading(folder: Path, registry: NodeRegistry) -> None:
    catalog = make(folder, registry)
    errors: list[BaseException] = []

    def use() -> None:
        try:
            for _ in range(50):
                catalog.build("toy", {"2/seed": 3})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(10):
        bump(folder / "toy.json")
    for t in threads:
        t.join()
    assert errors == []
