"""With API keys each client sees its own work: ComfyUI prompts, queue entries, history,
interrupts, uploads and outputs, socket messages, bridge clientIds; admins see and manage all."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from genserve.auth.keys import KeyStore
from genserve.auth.principal import Scope
from tests.conftest import small_settings
from tests.integration.bridge_support import write_bridge_catalog
from tests.integration.conftest import LiveServer, live_server, make_data_root, wait_for


class Caller:
    def __init__(self, live: LiveServer, name: str, scope: Scope, store: KeyStore) -> None:
        key, self.token = store.add(name, {scope})
        self.key_id = key.id
        self.http = httpx.Client(
            base_url=live.url, timeout=60, headers={"Authorization": f"Bearer {self.token}"}
        )


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[tuple[LiveServer, dict[str, Caller]]]:
    root = tmp_path_factory.mktemp("owners")
    data = make_data_root(root / "data", demo_images)
    write_bridge_catalog(data)
    store = KeyStore(root / "auth" / "keys.json")
    settings = small_settings(demo_models, data, GENSERVE_AUTH__KEYS_FILE=str(store.path))
    with live_server(settings, data) as live:
        callers = {
            "alice": Caller(live, "alice", Scope.INFER, store),
            "bob": Caller(live, "bob", Scope.INFER, store),
            "ops": Caller(live, "ops", Scope.ADMIN, store),
        }
        try:
            yield live, callers
        finally:
            for caller in callers.values():
                caller.http.close()


def png(color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(out, format="PNG")
    return out.getvalue()


def copy_prompt(image: str, seconds: float = 0.0) -> dict[str, Any]:
    """LoadImage -> (DelayImage) -> SaveImage: no model, so it runs in a moment (or ``seconds``)."""
    prompt: dict[str, Any] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "mine"}},
    }
    if seconds:
        prompt["2"] = {"class_type": "DelayImage", "inputs": {"image": ["1", 0], "seconds": seconds}}
        prompt["3"]["inputs"]["images"] = ["2", 0]
    return prompt


def submit(caller: Caller, prompt: dict[str, Any]) -> str:
    answer = caller.http.post("/comfy/prompt", json={"prompt": prompt})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["prompt_id"])


def finished(caller: Caller, prompt_id: str) -> dict[str, Any]:
    wait_for(lambda: prompt_id in caller.http.get(f"/comfy/history/{prompt_id}").json(), 60, "the prompt")
    return caller.http.get(f"/comfy/history/{prompt_id}").json()[prompt_id]  # type: ignore[no-any-return]


def upload(caller: Caller, name: str) -> dict[str, Any]:
    answer = caller.http.post("/comfy/upload/image", files={"image": (name, png(), "image/png")})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_uploads_and_outputs_are_the_uploader_s(keyed: tuple[LiveServer, dict[str, Caller]]) -> None:
    _, who = keyed
    alice, bob, ops = who["alice"], who["bob"], who["ops"]
    stored = upload(alice, "secret.png")
    assert stored["subfolder"] == f"clients/{alice.key_id}"
    view = {"filename": stored["name"], "subfolder": stored["subfolder"], "type": "input"}
    assert alice.http.get("/comfy/view", params=view).status_code == 200
    assert bob.http.get("/comfy/view", params=view).status_code == 404
    assert ops.http.get("/comfy/view", params=view).status_code == 200
    assert "secret.png" not in str(bob.http.get("/comfy/object_info/LoadImage").json())

    path = f"{stored['subfolder']}/{stored['name']}"
    refused = bob.http.post("/comfy/prompt", json={"prompt": copy_prompt(path)})
    assert refused.status_code == 404 and "file not found" in refused.text

    entry = finished(alice, submit(alice, copy_prompt(path)))
    saved = entry["outputs"]["3"]["images"][0]
    assert saved["subfolder"] == f"clients/{alice.key_id}"
    assert alice.http.get("/comfy/view", params=saved).status_code == 200
    assert bob.http.get("/comfy/view", params=saved).status_code == 404


def test_queue_history_and_interrupt_are_per_key(keyed: tuple[LiveServer, dict[str, Caller]]) -> None:
    _, who = keyed
    alice, bob, ops = who["alice"], who["bob"], who["ops"]
    image = f"{upload(alice, 'slow.png')['subfolder']}/slow.png"
    prompt_id = submit(alice, copy_prompt(image, seconds=30))
    wait_for(lambda: alice.http.get("/comfy/queue").json()["queue_running"], 30, "the prompt to run")
    assert bob.http.get("/comfy/queue").json() == {"queue_running": [], "queue_pending": []}
    assert ops.http.get("/comfy/queue").json()["queue_running"][0][1] == prompt_id

    assert bob.http.post("/comfy/interrupt", json={}).status_code == 200
    time.sleep(1.0)
    assert alice.http.get("/comfy/queue").json()["queue_running"], "bob interrupted alice's prompt"
    cleared = bob.http.post("/comfy/queue", json={"clear": True})
    assert cleared.status_code == 403 and cleared.json()["error_code"] == "PERMISSION_DENIED"
    bob.http.post("/comfy/history", json={"clear": True})

    assert alice.http.post("/comfy/interrupt", json={}).status_code == 200
    entry = finished(alice, prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert prompt_id not in bob.http.get("/comfy/history").json()
    assert bob.http.get(f"/comfy/history/{prompt_id}").json() == {}
    assert prompt_id in ops.http.get("/comfy/history").json()


def test_a_client_id_belongs_to_the_first_key(keyed: tuple[LiveServer, dict[str, Caller]]) -> None:
    live, who = keyed
    alice, bob, ops = who["alice"], who["bob"], who["ops"]
    ws = live.url.replace("http://", "ws://") + "/comfy/ws?clientId=alices-tab"
    with connect(f"{ws}&token={alice.token}", open_timeout=10) as socket:
        assert socket.recv(timeout=10)
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{ws}&token={bob.token}", open_timeout=10)
    assert refused.value.response.status_code == 403
    answer = bob.http.post("/comfy/prompt", json={"prompt": copy_prompt("x.png"), "client_id": "alices-tab"})
    assert answer.status_code == 403

    # The bridge's clientId likewise, kept in its job store.
    assert alice.http.get("/history", params={"clientId": "alices-job"}).status_code == 204  # claimed
    for path in ("/execution-info", "/history"):
        taken = bob.http.get(path, params={"clientId": "alices-job"})
        assert taken.status_code == 403 and "belongs to another API key" in taken.json()["detail"]
    assert bob.http.post("/interrupt", params={"clientId": "alices-job"}).status_code == 403
    assert ops.http.get("/history", params={"clientId": "alices-job"}).status_code == 204


def test_freeing_memory_is_for_admins(keyed: tuple[LiveServer, dict[str, Caller]]) -> None:
    _, who = keyed
    for path in ("/free", "/comfy/free"):
        assert who["alice"].http.post(path, json={}).status_code == 403
        assert who["ops"].http.post(path, json={}).status_code == 200
