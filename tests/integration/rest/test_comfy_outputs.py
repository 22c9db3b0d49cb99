"""ComfyUI's outputs through a real server: SaveImage's PNGs carry the prompt and the workflow
(extra_data.extra_pnginfo) as ComfyUI writes them, an identical prompt re-queued answers with
the first run's files and writes none, PreviewImage's files are served as type=temp, and
TextGenerate runs on the demo LLM."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from genserve.models.demo.llm import DEMO_LLM
from tests.integration.conftest import LiveServer, wait_for

COMFY = "/comfy"
WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 1, "type": "LoadImage"}, {"id": 9, "type": "SaveImage"}]}


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + COMFY, timeout=60.0) as c:
        yield c


def queue(client: httpx.Client, prompt: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """POST /prompt, wait for its history entry, and return it."""
    body = {"prompt": prompt, "client_id": uuid.uuid4().hex, "extra_data": extra}
    response = client.post("/prompt", json=body)
    assert response.status_code == 200, response.text
    prompt_id = response.json()["prompt_id"]
    wait_for(lambda: prompt_id in client.get(f"/history/{prompt_id}").json(), 120, "the history entry")
    entry: dict[str, Any] = client.get(f"/history/{prompt_id}").json()[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


def save_prompt(prefix: str, class_type: str = "SaveImage") -> dict[str, Any]:
    inputs: dict[str, Any] = {"images": ["1", 0]}
    if class_type == "SaveImage":
        inputs["filename_prefix"] = prefix
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
        "9": {"class_type": class_type, "inputs": inputs},
    }


def output_files(server: LiveServer) -> list[Path]:
    root = server.runtime.settings.workflows.output_dir
    return sorted(p for p in root.rglob("*") if p.is_file())


def png_chunks(data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return {key: json.loads(value) for key, value in image.text.items()}  # type: ignore[attr-defined]


def test_saved_png_restores_the_prompt_and_workflow(client: httpx.Client) -> None:
    prompt = save_prompt(f"meta_{uuid.uuid4().hex[:8]}")
    entry = queue(client, prompt, extra_pnginfo={"workflow": WORKFLOW, "note": "kept"})
    [saved] = entry["outputs"]["9"]["images"]
    view = client.get("/view", params=saved)
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    assert png_chunks(view.content) == {"prompt": prompt, "workflow": WORKFLOW, "note": "kept"}


def test_an_identical_prompt_requeued_writes_no_new_file(client: httpx.Client, server: LiveServer) -> None:
    prompt = save_prompt(f"again_{uuid.uuid4().hex[:8]}")
    first = queue(client, prompt, extra_pnginfo={"workflow": WORKFLOW})
    files = output_files(server)
    second = queue(client, prompt, extra_pnginfo={"workflow": WORKFLOW})
    assert second["outputs"] == first["outputs"]
    assert output_files(server) == files
    cached = next(data for kind, data in second["status"]["messages"] if kind == "execution_cached")
    assert set(cached["nodes"]) == {"1", "9"}
    changed = save_prompt(prompt["9"]["inputs"]["filename_prefix"] + "_b")
    third = queue(client, changed, extra_pnginfo={"workflow": WORKFLOW})
    assert third["outputs"] != first["outputs"] and len(output_files(server)) == len(files) + 1


def test_preview_image_is_served_as_temp(client: httpx.Client) -> None:
    entry = queue(client, save_prompt("", class_type="PreviewImage"))
    [preview] = entry["outputs"]["9"]["images"]
    assert preview["type"] == "temp"
    view = client.get("/view", params=preview)
    assert view.status_code == 200 and "prompt" in png_chunks(view.content)


def test_text_generate_runs_on_the_demo_llm(client: httpx.Client) -> None:
    assert (
        DEMO_LLM
        in client.get("/object_info/CLIPLoader").json()["CLIPLoader"]["input"]["required"]["clip_name"][0]
    )
    prompt = {
        "1": {"class_type": "CLIPLoader", "inputs": {"clip_name": DEMO_LLM, "type": "stable_diffusion"}},
        "2": {
            "class_type": "TextGenerate",
            "inputs": {
                "clip": ["1", 0],
                "prompt": "Write a title for a fox picture.",
                "max_length": 10,
                "sampling_mode": "on",
                "sampling_mode.seed": 3,
            },
        },
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    entry = queue(client, prompt)
    [text] = entry["outputs"]["3"]["text"]
    assert isinstance(text, str) and text
