"""ComfyUI's own API on a real server, driven as a ComfyUI client drives it: upload, POST /prompt
while a WebSocket collects messages, then history and view."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from genserve.workflows.demo import demo_workflow
from tests.integration.conftest import LiveServer, wait_for

# The whole ComfyUI API is under /comfy (at the root the bridge owns /ws, GET /history, /free, /interrupt).
COMFY = "/comfy"
FINAL = {"execution_success", "execution_error", "execution_interrupted"}


class Listener:
    """A WebSocket client collecting ComfyUI messages on a thread until its prompt finishes."""

    def __init__(self, server: LiveServer, client_id: str) -> None:
        url = server.url.replace("http://", "ws://") + f"{COMFY}/ws?clientId={client_id}"
        self.ws: ClientConnection = connect(url, open_timeout=10)
        self.messages: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                self.messages.append(json.loads(raw))
        except Exception:
            return

    def types(self, prompt_id: str) -> list[str]:
        return [m["type"] for m in self.messages if m["data"].get("prompt_id") == prompt_id]

    def wait_done(self, prompt_id: str, timeout: float = 120.0) -> list[dict[str, Any]]:
        def done() -> bool:
            mine = [m for m in self.messages if m["data"].get("prompt_id") == prompt_id]
            closed = any(m["type"] == "executing" and m["data"]["node"] is None for m in mine)
            return closed and any(m["type"] in FINAL for m in mine)

        wait_for(done, timeout, f"prompt {prompt_id} to finish")
        return [m for m in self.messages if m["data"].get("prompt_id") == prompt_id]

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    """A ComfyUI client: every path under the /comfy prefix."""
    with httpx.Client(base_url=server.url + COMFY, timeout=60.0) as c:
        yield c


@pytest.fixture
def listener(server: LiveServer) -> Iterator[Listener]:
    ws = Listener(server, uuid.uuid4().hex)
    wait_for(lambda: any(m["type"] == "status" for m in ws.messages), 10, "the status message")
    yield ws
    ws.close()


def upload(client: httpx.Client, name: str, data: bytes, **fields: str) -> httpx.Response:
    return client.post("/upload/image", files={"image": (name, data, "image/png")}, data=fields)


def edit_prompt(client: httpx.Client, demo_images: Path) -> dict[str, Any]:
    names = {}
    for image in ("person.png", "cloth.png"):
        response = upload(client, f"up_{image}", (demo_images / image).read_bytes(), overwrite="true")
        assert response.status_code == 200, response.text
        assert response.json() == {"name": f"up_{image}", "subfolder": "", "type": "input"}
        names[image] = response.json()["name"]
    prompt = demo_workflow("image-edit")
    prompt["78"]["inputs"]["image"] = names["person.png"]
    prompt["106"]["inputs"]["image"] = names["cloth.png"]
    return prompt


def test_prompt_runs_with_ws_messages_history_and_view(
    client: httpx.Client, listener: Listener, demo_images: Path
) -> None:
    status = listener.messages[0]
    assert status["type"] == "status" and "queue_remaining" in status["data"]["status"]["exec_info"]
    prompt = edit_prompt(client, demo_images)
    response = client.post("/prompt", json={"prompt": prompt, "client_id": listener_id(listener)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    prompt_id = body["prompt_id"]
    messages = listener.wait_done(prompt_id)
    types = [m["type"] for m in messages]
    assert types[0] == "execution_start" and types[1] == "execution_cached"
    assert "progress" in types and "executed" in types
    # the run closes as ComfyUI's does: execution_success, then executing {node: null}
    assert types[-2:] == ["execution_success", "executing"]
    assert next(m for m in messages[-2:] if m["type"] == "executing")["data"]["node"] is None
    progress = next(m for m in messages if m["type"] == "progress")["data"]
    assert progress["node"] == "3" and progress["max"] == 4

    history = client.get(f"/history/{prompt_id}").json()
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    saved = entry["outputs"]["60"]["images"][0]
    assert saved["type"] == "output"
    assert prompt_id in client.get("/history").json()
    assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}

    view = client.get("/view", params=saved)
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(view.content))
    # the person picture scaled to about 128x128 pixels in steps of 32, its aspect kept
    width, height = image.size
    assert image.format == "PNG" and width % 32 == 0 and height % 32 == 0
    assert abs(width * height - 128 * 128) <= 128 * 128 // 4
    person = Image.open(demo_images / "person.png").size
    assert abs(width / height - person[0] / person[1]) < 0.25


def listener_id(listener: Listener) -> str:
    return listener.messages[0]["data"]["sid"]


def test_invalid_prompt_answers_400_naming_the_node(client: httpx.Client, demo_images: Path) -> None:
    prompt = edit_prompt(client, demo_images)
    prompt["3"]["inputs"]["steps"] = "many"
    prompt["3"]["inputs"]["model"] = ["999", 0]
    response = client.post("/prompt", json={"prompt": prompt, "client_id": "x"})
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["3"]["class_type"] == "KSampler"
    assert client.post("/prompt", json={"client_id": "x"}).status_code == 400


def test_upload_refuses_non_images_and_path_tricks(client: httpx.Client, demo_images: Path) -> None:
    assert upload(client, "fake.png", b"not a picture at all").status_code == 400
    png = (demo_images / "person.png").read_bytes()
    response = upload(client, "../escape.png", png, overwrite="true")
    assert response.status_code == 200
    assert response.json()["name"] == "escape.png"
    assert upload(client, "x.png", png, subfolder="../..").status_code == 400
    assert client.get("/view", params={"filename": "../escape.png", "type": "input"}).status_code == 400
    assert (
        client.get("/view", params={"filename": "escape.png", "type": "input", "subfolder": ".."}).status_code
        == 403
    )
    assert client.get("/view", params={"filename": "escape.png", "type": "input"}).status_code == 200
    assert client.get("/view", params={"filename": "escape.png", "type": "bogus"}).status_code == 400
    # temp (PreviewImage's folder) is served, and holds no uploads
    assert client.get("/view", params={"filename": "escape.png", "type": "temp"}).status_code == 404


def test_interrupt_stops_the_running_prompt(
    client: httpx.Client, listener: Listener, demo_images: Path
) -> None:
    prompt = edit_prompt(client, demo_images)
    prompt["3"]["inputs"]["steps"] = 400
    prompt["3"]["inputs"]["seed"] = 7
    body = client.post("/prompt", json={"prompt": prompt, "client_id": listener_id(listener)}).json()
    prompt_id = body["prompt_id"]
    wait_for(lambda: "progress" in listener.types(prompt_id), 60, "the sampler to start")
    assert client.get("/queue").json()["queue_running"][0][1] == prompt_id
    assert client.post("/interrupt").status_code == 200
    messages = listener.wait_done(prompt_id, 60)
    types = [m["type"] for m in messages]
    assert "execution_interrupted" in types and "execution_success" not in types
    interrupted = next(m for m in messages if m["type"] == "execution_interrupted")["data"]
    assert interrupted["node_id"] == "3" and interrupted["node_type"] == "KSampler"
    assert client.get(f"/history/{prompt_id}").json()[prompt_id]["status"]["status_str"] == "error"


def test_object_info_lists_ksampler_with_comfy_inputs(client: httpx.Client) -> None:
    info = client.get("/object_info").json()
    required = info["KSampler"]["input"]["required"]
    assert {"model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative"} <= set(
        required
    )
    assert {"latent_image", "denoise"} <= set(required)
    assert client.get("/object_info/KSampler").json().keys() == {"KSampler"}
    assert client.get("/object_info/NoSuchNode").json() == {}
    assert client.post("/free", json={"unload_models": True, "free_memory": True}).status_code == 200


def test_root_serves_comfy_routes_the_bridge_does_not_use(server: LiveServer) -> None:
    """/prompt, /queue, /object_info answer at the root as in ComfyUI; /ws there is the bridge's."""
    with server.client() as root:
        assert root.get("/queue").json() == {"queue_running": [], "queue_pending": []}
        assert "KSampler" in root.get("/object_info/KSampler").json()
        assert root.post("/prompt", json={"client_id": "x"}).status_code == 400
        # GET /history at the root is the bridge's: it wants a clientId, in the bridge's error shape.
        assert root.get("/history").json() == {"detail": "clientId is required (query ?clientId=...)"}
