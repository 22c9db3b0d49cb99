"""ComfyUI's own listener on a real server: every route at the root and under /api/ as ComfyUI
serves them, a prompt queued and watched at ComfyUI's paths, the web UI's per-user settings and
user data, the mask upload, the frontend's files, and the main port's offline API docs."""

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
from websockets.sync.client import connect

from genserve.workflows.demo import UNET, demo_workflow
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root

PREFIXES = ("", "/api")


@pytest.fixture(scope="module")
def comfy_server(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[LiveServer]:
    data = make_data_root(tmp_path_factory.mktemp("comfy") / "data", demo_images)
    with live_server(small_settings(demo_models, data), data, comfy=True) as live:
        yield live


@pytest.fixture
def comfy(comfy_server: LiveServer) -> Iterator[httpx.Client]:
    with comfy_server.comfy_client() as client:
        yield client


def png(size: tuple[int, int] = (32, 32), mode: str = "RGB", color: Any = (200, 20, 20)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_server_facts_at_the_root_and_under_api(comfy: httpx.Client, prefix: str) -> None:
    stats = comfy.get(f"{prefix}/system_stats").json()
    assert stats["system"]["ram_total"] > 0 and stats["devices"]
    assert {"name", "type", "vram_total", "vram_free"} <= set(stats["devices"][0])
    assert "/work" not in json.dumps(stats) and "/tmp" not in json.dumps(stats)
    assert comfy.get(f"{prefix}/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    for path, empty in (("/embeddings", []), ("/extensions", []), ("/i18n", {}), ("/workflow_templates", {})):
        assert comfy.get(prefix + path).json() == empty, path
    assert comfy.get(f"{prefix}/features").json()["max_upload_size"] > 0
    assert "KSampler" in comfy.get(f"{prefix}/object_info").json()
    assert comfy.get(f"{prefix}/queue").json() == {"queue_running": [], "queue_pending": []}


def test_model_folders_list_the_registry(comfy: httpx.Client) -> None:
    folders = comfy.get("/api/models").json()
    assert {"checkpoints", "diffusion_models", "text_encoders", "vae", "loras"} <= set(folders)
    assert UNET in comfy.get("/api/models/diffusion_models").json()
    assert comfy.get("/models/unet").json() == comfy.get("/models/diffusion_models").json()  # legacy name
    assert comfy.get("/api/models/checkpoints").json() == []
    assert comfy.get("/api/models/nope").status_code == 404
    listed = comfy.get("/api/experiment/models/diffusion_models").json()
    assert any(entry["name"] == UNET for entry in listed)
    assert any(entry["name"] == "vae" for entry in comfy.get("/api/experiment/models").json())
    for bad in ("../x.safetensors", "nope.safetensors", UNET.removesuffix(".safetensors")):
        assert comfy.get("/api/view_metadata/diffusion_models", params={"filename": bad}).status_code == 404


def test_a_comfyui_client_queues_and_watches_at_the_root(
    comfy_server: LiveServer, comfy: httpx.Client
) -> None:
    """As a client given http://host:8188 would: /ws, POST /prompt, /history, /view at the root."""
    client_id = uuid.uuid4().hex
    ws_url = comfy_server.comfy_url.replace("http://", "ws://") + f"/ws?clientId={client_id}"  # type: ignore[union-attr]
    with connect(ws_url, open_timeout=10) as ws:
        assert json.loads(ws.recv(10))["type"] == "status"
        answer = comfy.post(
            "/prompt", json={"prompt": demo_workflow("text-to-image"), "client_id": client_id}
        )
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        while True:
            message = json.loads(ws.recv(120))
            data = message.get("data", {})
            if (
                message["type"] == "executing"
                and data.get("node") is None
                and data.get("prompt_id") == prompt_id
            ):
                break
    entry = comfy.get(f"/api/history/{prompt_id}").json()[prompt_id]
    image = next(i for out in entry["outputs"].values() for i in out.get("images", []))
    viewed = comfy.get("/view", params=image)
    assert viewed.status_code == 200 and Image.open(io.BytesIO(viewed.content)).size == (128, 128)


def test_settings_are_kept_per_user(comfy: httpx.Client) -> None:
    alice, bob = {"Comfy-User": "alice"}, {"Comfy-User": "bob"}
    assert comfy.post("/api/settings", json={"Comfy.Theme": "dark", "n": 1}, headers=alice).status_code == 200
    assert comfy.post("/api/settings/n", json=2, headers=alice).status_code == 200
    assert comfy.get("/api/settings", headers=alice).json() == {
        "Comfy.TutorialCompleted": True,
        "Comfy.Theme": "dark",
        "n": 2,
    }
    assert comfy.get("/api/settings/Comfy.Theme", headers=alice).json() == "dark"
    assert comfy.get("/api/settings", headers=bob).json() == {"Comfy.TutorialCompleted": True}
    assert comfy.get("/settings/missing", headers=bob).json() is None
    assert comfy.post("/api/settings", json=[1], headers=bob).status_code == 400
    assert comfy.get("/api/settings", headers={"Comfy-User": "../alice"}).status_code == 400
    assert comfy.get("/api/users").json() == {"storage": "server", "migrated": True}
    made = comfy.post("/api/users", json={"username": "Carol C"}).json()
    assert (
        made.startswith("Carol-C_")
        and comfy.get("/api/settings/n", headers={"Comfy-User": made}).json() is None
    )


def test_userdata_saves_lists_moves_and_deletes_workflows(comfy: httpx.Client) -> None:
    user = {"Comfy-User": f"u{uuid.uuid4().hex[:8]}"}
    workflow = json.dumps({"nodes": [], "links": []}).encode()
    saved = comfy.post("/api/userdata/workflows%2Fmine.json", content=workflow, headers=user)
    assert saved.status_code == 200 and saved.json() == "workflows/mine.json"
    assert comfy.get("/api/userdata/workflows%2Fmine.json", headers=user).content == workflow
    listing = "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true"
    info = comfy.get(listing, headers=user).json()
    assert [(i["path"], i["size"]) for i in info] == [("mine.json", len(workflow))]
    assert comfy.get("/userdata?dir=workflows&split=true", headers=user).json() == [
        ["mine.json", "mine.json"]
    ]
    again = comfy.post("/api/userdata/workflows%2Fmine.json?overwrite=false", content=b"{}", headers=user)
    assert again.status_code == 409
    moved = comfy.post("/api/userdata/workflows%2Fmine.json/move/workflows%2Fsub%2Fother.json", headers=user)
    assert moved.status_code == 200 and moved.json() == "workflows/sub/other.json"
    assert comfy.get("/api/userdata?dir=workflows&recurse=true", headers=user).json() == ["sub/other.json"]
    assert comfy.get("/api/userdata/workflows%2Fmine.json", headers=user).status_code == 404
    assert comfy.get("/api/userdata?dir=workflows", headers={"Comfy-User": "someone-else"}).json() == []
    assert comfy.delete("/api/userdata/workflows%2Fsub%2Fother.json", headers=user).status_code == 204
    assert comfy.get("/api/userdata?dir=workflows&recurse=true", headers=user).json() == []


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/userdata/..%2F..%2Fescape.json", 400),
        ("/api/userdata/%2Fetc%2Fpasswd", 400),
        ("/api/userdata/" + "a" * 300, 400),
        ("/api/userdata/%FF%FE", 400),
        ("/api/userdata?dir=", 400),
        ("/api/userdata?dir=..%2F..", 400),
    ],
)
def test_userdata_refuses_paths_outside_the_users_folder(comfy: httpx.Client, path: str, status: int) -> None:
    answer = comfy.post(path, content=b"{}") if "?" not in path else comfy.get(path)
    assert answer.status_code == status, answer.text
    assert "/tmp" not in answer.text and "Traceback" not in answer.text


def test_userdata_size_is_bounded(comfy_server: LiveServer, comfy: httpx.Client) -> None:
    limit = comfy_server.runtime.settings.comfy.max_userdata_bytes
    answer = comfy.post("/api/userdata/big.bin", content=b"x" * (limit + 1))
    assert answer.status_code == 413 and "comfy.max_userdata_bytes" in answer.text, answer.text[:300]


def test_mask_upload_puts_the_mask_into_the_originals_alpha(comfy: httpx.Client) -> None:
    original = comfy.post("/upload/image", files={"image": ("face.png", png(), "image/png")}).json()
    mask = png(mode="RGBA", color=(0, 0, 0, 77))
    ref = json.dumps({"filename": original["name"], "subfolder": "", "type": "input"})
    answer = comfy.post(
        "/api/upload/mask",
        files={"image": ("clipspace-mask.png", mask, "image/png")},
        data={"original_ref": ref, "type": "input", "subfolder": "clipspace"},
    )
    assert answer.status_code == 200, answer.text
    stored = answer.json()
    assert stored["subfolder"] == "clipspace" and stored["type"] == "input"
    viewed = comfy.get("/view", params={**stored, "filename": stored["name"]})
    image = Image.open(io.BytesIO(viewed.content))
    assert image.mode == "RGBA" and image.getpixel((3, 3)) == (200, 20, 20, 77)
    for bad_ref in (
        "not json",
        json.dumps({"filename": "../x.png", "type": "input"}),
        json.dumps({"filename": "none.png", "type": "input"}),
    ):
        refused = comfy.post(
            "/upload/mask", files={"image": ("m.png", mask, "image/png")}, data={"original_ref": bad_ref}
        )
        assert refused.status_code in (400, 404), bad_ref


def test_the_frontend_and_templates_are_served(comfy: httpx.Client) -> None:
    page = comfy.get("/")
    assert page.status_code == 200 and "<title>ComfyUI</title>" in page.text
    assert page.headers["cache-control"] == "no-cache"
    assert comfy.get("/user.css").status_code == 200
    assert comfy.get("/api/userdata/user.css").status_code == 200
    assert "templates" in comfy.get("/templates/index.json").text or comfy.get("/templates/index.json").json()


def test_main_port_docs_load_their_assets_from_this_server(comfy_server: LiveServer) -> None:
    with comfy_server.client() as client:
        for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            html = client.get(page).text
            assert f"/docs-assets/{asset}" in html and "cdn." not in html and "fonts.googleapis" not in html
            assert client.get(f"/docs-assets/{asset}").status_code == 200
        assert client.get("/comfy/prompt").json() == {"exec_info": {"queue_remaining": 0}}
