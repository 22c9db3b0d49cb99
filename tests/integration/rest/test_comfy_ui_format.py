"""A UI-format workflow ("Save", not "Save (API)") posted to a real server's ``/comfy/prompt``: it
is converted, runs, and keeps the UI workflow for the PNG; a broken one gets one clear error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from genserve.workflows.demo import demo_workflow
from tests.integration.conftest import LiveServer, wait_for

COMFY = "/comfy"


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + COMFY, timeout=60.0) as c:
        yield c


def _widgets(info: dict[str, Any], inputs: dict[str, Any]) -> list[Any]:
    """``widgets_values`` as ComfyUI's frontend saves them, hidden control values included."""
    values: list[Any] = []
    uploads = 0
    for part in ("required", "optional"):
        if part == "optional":
            values += ["image"] * uploads
        specs = info["input"].get(part, {})
        for name in info["input_order"].get(part, []):
            head, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            is_widget = isinstance(head, list) or head in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            if not is_widget or options.get("forceInput"):
                continue
            values.append(inputs.get(name, options.get("default")))
            if options.get("control_after_generate", head == "INT" and name in ("seed", "noise_seed")):
                values.append("fixed")
            uploads += bool(options.get("image_upload"))
    return values


def api_to_ui(prompt: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The UI-format file ComfyUI would save for ``prompt``, with a note and a reroute added."""
    nodes: dict[str, dict[str, Any]] = {}
    links: list[list[Any]] = []
    for node_id, node in prompt.items():
        info = object_info[node["class_type"]]
        nodes[node_id] = {
            "id": int(node_id),
            "type": node["class_type"],
            "mode": 0,
            "inputs": [],
            "outputs": [{"name": t, "type": t, "links": []} for t in info["output"]],
            "widgets_values": _widgets(info, node["inputs"]),
        }
    for node_id, node in prompt.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                link_id = len(links) + 1
                slot = nodes[node_id]["inputs"]
                kind = nodes[value[0]]["outputs"][value[1]]["type"]
                slot.append({"name": name, "type": kind, "link": link_id})
                links.append([link_id, int(value[0]), value[1], int(node_id), len(slot) - 1, kind])
                nodes[value[0]]["outputs"][value[1]]["links"].append(link_id)
    # Route the decoded image to SaveImage through a reroute, as users tidy their canvas.
    save_input = nodes["60"]["inputs"][0]
    links.append([900, 901, 0, 60, 0, "IMAGE"])
    reroute = {
        "id": 901,
        "type": "Reroute",
        "mode": 0,
        "outputs": [{"name": "", "type": "*", "links": [900]}],
    }
    reroute["inputs"] = [{"name": "", "type": "*", "link": save_input["link"]}]
    links[save_input["link"] - 1][3:5] = [901, 0]
    save_input["link"] = 900
    note = {
        "id": 902,
        "type": "MarkdownNote",
        "mode": 0,
        "inputs": [],
        "outputs": [],
        "widgets_values": ["hi"],
    }
    return {
        "version": 0.4,
        "nodes": [*nodes.values(), reroute, note],
        "links": links,
        "groups": [],
        "extra": {},
    }


def test_ui_format_workflow_is_converted_run_and_kept_for_the_png(client: httpx.Client) -> None:
    original = demo_workflow("text-to-image")
    ui = api_to_ui(original, client.get("/object_info").json())
    response = client.post("/prompt", json={"prompt": ui, "client_id": "ui-format"})
    assert response.status_code == 200, response.text
    prompt_id = response.json()["prompt_id"]

    def finished() -> bool:
        entry = client.get(f"/history/{prompt_id}").json().get(prompt_id)
        return bool(entry) and entry["status"]["completed"] is not None

    wait_for(finished, 120, "the UI-format prompt to finish")
    entry = client.get(f"/history/{prompt_id}").json()[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["outputs"]["60"]["images"][0]["type"] == "output"
    queued = entry["prompt"][2]
    assert {k: (v["class_type"], v["inputs"]) for k, v in queued.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in original.items()
    }
    assert entry["prompt"][3]["extra_pnginfo"]["workflow"] == ui


def test_a_broken_ui_format_body_gets_one_error_saying_save_api(client: httpx.Client) -> None:
    broken = {
        "nodes": [{"id": 1, "type": "SaveImage", "inputs": [{"name": "images", "link": 7}]}],
        "links": [],
    }
    response = client.post("/prompt", json={"prompt": broken, "client_id": "x"})
    assert response.status_code == 400
    body = response.json()
    assert body["node_errors"] == {}
    assert body["error"]["type"] == "invalid_prompt"
    assert '"Save (API)"' in body["error"]["message"] and "UI format" in body["error"]["message"]
    assert "link 7" in body["error"]["details"]
