"""The workflow catalog takes UI-format files ("Save", the templates) too, converted on load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genserve.bridge.aliases import WorkflowCatalog
from genserve.workflows.nodes.base import NodeRegistry


def ui_toy() -> dict[str, Any]:
    """Number -> Scale -> Collect on the canvas, with a note; Scale keeps seed's control value."""

    def node(
        node_id: int, kind: str, values: list[Any], inputs: list[Any], links: list[int]
    ) -> dict[str, Any]:
        outputs = [{"name": "NUMBER", "type": "NUMBER", "links": links}]
        return {
            "id": node_id,
            "type": kind,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "widgets_values": values,
        }

    return {
        "version": 0.4,
        "nodes": [
            node(1, "Number", [2.0], [], [1]),
            node(
                2,
                "Scale",
                [3, 7, "randomize", "mul", False],
                [{"name": "x", "type": "NUMBER", "link": 1}],
                [2],
            ),
            node(3, "Collect", ["a cat"], [{"name": "values", "type": "NUMBER", "link": 2}], []),
            node(4, "Note", ["how to use"], [], []),
        ],
        "links": [[1, 1, 0, 2, 0, "NUMBER"], [2, 2, 0, 3, 0, "NUMBER"]],
        "groups": [],
        "extra": {},
    }


def test_ui_format_file_is_served_and_built_as_api_format(tmp_path: Path, registry: NodeRegistry) -> None:
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "toy_ui.json").write_text(json.dumps(ui_toy()))
    (folder / "broken_ui.json").write_text(json.dumps({"nodes": [{"id": 1}], "links": []}))
    alias_file = tmp_path / "aliases.json"
    aliases = {
        "toy": {"file": "toy_ui.json", "inputs": ["2/seed", "3/label"]},
        "broken": {"file": "broken_ui.json", "inputs": []},
    }
    alias_file.write_text(json.dumps(aliases))
    catalog = WorkflowCatalog(folder, alias_file, registry)

    assert catalog.aliases() == ["toy"]
    assert catalog.info("toy") == {
        "2/seed": {"type": "int", "title": "Scale a number", "class": "Scale", "default": 7},
        "3/label": {"type": "str", "title": "Collect", "class": "Collect", "default": "a cat"},
    }
    built = catalog.build("toy", {"2/seed": 11})
    assert built["2"]["inputs"] == {"factor": 3, "seed": 11, "mode": "mul", "exact": False, "x": ["1", 0]}
    assert set(built) == {"1", "2", "3"}
    reason = catalog.problems()["broken"]
    assert "broken_ui.json is in ComfyUI's UI format" in reason and '"Save (API)"' in reason
