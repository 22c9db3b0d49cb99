"""The bridge keeps clients apart and tells them the truth, on a real server: uploads from the spec's
own client, header-safe 204s, reconnecting sockets, uploads nobody else can see or replace and that
go away once collected, spec statuses only, no 100 % before an error, a last word on shutdown, and
no server paths or forgotten sessions left behind."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image

from genserve.bridge.dispatcher import Bridge
from genserve.workflows.nodes.image import BRIDGE_UPLOADS
from tests.conftest import small_settings
from tests.integration.bridge_support import SLOW, BridgeSocket, multipart_files, write_bridge_catalog
from tests.integration.conftest import LiveServer, live_server, make_data_root, wait_for

FAST = {"GENSERVE_BRIDGE__PROBE_INTERVAL_S": "0.2"}


@contextmanager
def bridge_server(env: dict[str, str], models: Path, data: Path) -> Iterator[tuple[LiveServer, Bridge]]:
    """A live server, and the Bridge inside it (built by the server) for what only it shows."""
    with live_server(small_settings(models, data, **env), data) as live:
        assert live.server.web.bridge is not None
        yield live, live.server.web.bridge


def on_loop(bridge: Bridge, make: Callable[[], Any]) -> Any:
    """Run a coroutine on the server's event loop (the bridge's), from the test's thread."""
    assert bridge._loop is not None
    return asyncio.run_coroutine_threadsafe(make(), bridge._loop).result(30)


@pytest.fixture(scope="module")
def bridge_data(tmp_path_factory: pytest.TempPathFactory, demo_images: Path) -> Path:
    data = make_data_root(tmp_path_factory.mktemp("bridge-clients") / "data", demo_images)
    write_bridge_catalog(data)
    (data / "inputs" / "broken.png").write_bytes(b"not a png, but named like one")
    return data


@pytest.fixture(scope="module")
def served(demo_models: Path, bridge_data: Path) -> Iterator[tuple[LiveServer, Bridge]]:
    with bridge_server(FAST, demo_models, bridge_data) as pair:
        yield pair


@pytest.fixture
def client(served: tuple[LiveServer, Bridge]) -> Iterator[httpx.Client]:
    with served[0].client() as c:
        yield c


def new_id() -> str:
    return uuid.uuid4().hex


def generate(client: httpx.Client, client_id: str, body: dict[str, Any]) -> httpx.Response:
    return client.post("/generate-based-workflow", params={"clientId": client_id}, json=body)


def info(client: httpx.Client, client_id: str) -> dict[str, str]:
    return client.get("/execution-info", params={"clientId": client_id}).json()


def wait_final(client: httpx.Client, client_id: str, timeout: float = 120) -> dict[str, str]:
    wait_for(lambda: info(client, client_id)["status"] in ("closed", "error"), timeout, f"{client_id} to end")
    return info(client, client_id)


def png(color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def attachment_upload(client: httpx.Client, data: bytes, filename: str = "x.png") -> httpx.Response:
    """The spec's tutorial client: a part with a file name and no ``name``."""
    head = f'--b\r\nContent-Disposition: attachment; filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
    body = head.encode() + data + b"\r\n--b--\r\n"
    return client.post("/upload", content=body, headers={"content-type": "multipart/form-data; boundary=b"})


def test_an_unnamed_upload_is_file_and_runs_then_goes_away(client: httpx.Client, bridge_data: Path) -> None:
    """Defects 1 and 5b: the tutorial's upload works, and the upload is deleted once collected."""
    uploaded = attachment_upload(client, png())
    assert uploaded.status_code == 200, uploaded.text
    saved = uploaded.json()["file"]
    assert saved.startswith(f"{BRIDGE_UPLOADS}/") and saved.endswith("_x.png")
    stored = bridge_data / "inputs" / saved
    assert stored.read_bytes() == png()
    client_id = new_id()
    body = {"workflow": "image-to-image", "78/image": saved, "3/seed": 5}
    assert generate(client, client_id, body).status_code == 200
    assert wait_final(client, client_id)["details"] == "Execution is done"
    assert stored.exists(), "kept until the results are collected"
    assert multipart_files(client.get("/history", params={"clientId": client_id}))
    assert not stored.exists()
    again = generate(client, new_id(), body)
    assert again.status_code == 400 and "is not in the input folder" in again.json()["detail"]


def test_history_204_headers_survive_any_client_id(client: httpx.Client) -> None:
    """Defect 2: non-ASCII and CR/LF clientIds answer 204 with the spec's text, percent-encoded."""
    unknown = "The client ID has not been submitted to the server before. It is not recognized."
    for client_id in ["한글", "a\r\nX-Injected: yes", "50% sure"]:
        response = client.get("/history", params={"clientId": client_id})
        assert response.status_code == 204, response.text
        header = response.headers["x-detail"]
        assert header.isascii() and "\r" not in header and "\n" not in header
        assert unquote(header) == f"{unknown} / {client_id.strip()}"
        assert "x-injected" not in response.headers
    assert client.get("/history", params={"clientId": "plain-id"}).headers["x-detail"] == (
        f"{unknown} / plain-id"
    )


def test_a_reconnect_does_not_cancel_the_job(served: tuple[LiveServer, Bridge], client: httpx.Client) -> None:
    """Defects 3 and 9b: the old socket closing leaves the job to the new one; the last one to
    close after the job is done leaves nothing behind in the sessions."""
    live, bridge = served
    client_id = new_id()
    old = BridgeSocket(live.url, client_id)
    assert generate(client, client_id, {"workflow": SLOW, "90/seconds": 2.0, "3/seed": 1}).status_code == 200
    old.wait_progress()
    new = BridgeSocket(live.url, client_id)
    old.close()
    time.sleep(0.3)
    assert info(client, client_id)["status"] == "progress"
    assert new.wait_final() == {"status": "closed", "details": "Execution is done"}
    new.close()
    assert multipart_files(client.get("/history", params={"clientId": client_id}))
    wait_for(lambda: bridge.sessions.last(client_id) is None, 5, "the session to be forgotten")
    assert not bridge.sessions.subscribed(client_id)


def test_interrupted_prompt_leaves_no_history_on_the_backend(
    client: httpx.Client, served: tuple[LiveServer, Bridge]
) -> None:
    """Defect 4 (local backend): the entry written when the prompt stops is deleted then. The
    bridge's prompts are hidden from ComfyUI's API, so the runner's queue is read in-process."""
    prompts = served[0].server.web.prompts
    assert prompts is not None
    client_id = new_id()
    assert generate(client, client_id, {"workflow": SLOW, "90/seconds": 30, "3/seed": 2}).status_code == 200
    wait_for(lambda: info(client, client_id)["status"] == "progress", 60, "the job to run")

    def running_job() -> str | None:
        running = prompts.queue(include_private=True)["queue_running"]
        return str(running[0][3]["client_id"]) if running else None

    wait_for(lambda: running_job() is not None, 30, "the prompt to run")
    job_id = running_job()
    assert client.post("/interrupt", params={"clientId": client_id}).status_code == 200
    assert wait_final(client, client_id)["details"] == "Execution was interrupted"
    wait_for(lambda: running_job() != job_id, 30, "the prompt to stop")
    time.sleep(0.5)

    def entries() -> list[str]:
        history = prompts.history(include_private=True)
        return [p for p, entry in history.items() if entry["prompt"][3].get("client_id") == job_id]

    assert entries() == []


def test_uploads_are_private(client: httpx.Client, bridge_data: Path) -> None:
    """Defect 5a and 5c: no listing of the input folder, no overwriting a bridge upload."""
    missing = generate(client, new_id(), {"workflow": "image-to-image", "78/image": "absent.png"})
    detail = missing.json()["detail"]
    assert missing.status_code == 400 and "'absent.png' is not in the input folder" in detail
    assert "person.png" not in detail and "broken.png" not in detail

    saved = attachment_upload(client, png((1, 2, 3)), "mine.png").json()["file"]
    original = (bridge_data / "inputs" / saved).read_bytes()
    choices = client.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    assert "person.png" in choices and not any(c.startswith(BRIDGE_UPLOADS) for c in choices)

    subfolder, _, name = saved.partition("/")

    def replace(data: bytes) -> httpx.Response:
        files = {"image": (name, data, "image/png")}
        return client.post("/upload/image", files=files, data={"subfolder": subfolder, "overwrite": "true"})

    attack = replace(png((250, 0, 0)))
    assert attack.status_code == 200 and attack.json()["name"] != name
    assert (bridge_data / "inputs" / saved).read_bytes() == original
    same = replace(original)  # a bridge re-sending the same input is not refused
    assert same.status_code == 200 and same.json() == {"name": name, "subfolder": subfolder, "type": "input"}
    # Outside the bridge's folder ComfyUI's overwrite is as it was.
    for color in [(0, 0, 1), (0, 0, 2)]:
        plain = client.post(
            "/upload/image", files={"image": ("shared.png", png(color), "image/png")}, data={"overwrite": "1"}
        )
        assert plain.json()["name"] == "shared.png"
    assert (bridge_data / "inputs" / "shared.png").read_bytes() == png((0, 0, 2))


def test_execution_info_uses_the_specs_statuses(client: httpx.Client) -> None:
    """Defect 6: a queued job is ``connected`` (the spec's table has no ``listening`` there)."""
    clients = [new_id() for _ in range(3)]
    for index, client_id in enumerate(clients):
        body = {"workflow": SLOW, "90/seconds": 20, "3/seed": 10 + index}
        assert generate(client, client_id, body).status_code == 200
    try:
        wait_for(lambda: info(client, clients[0])["status"] == "progress", 60, "the first job to run")
        queued = info(client, clients[-1])
        assert queued["status"] == "connected" and queued["details"].startswith("waiting in queue: position ")
        for client_id in clients:
            assert info(client, client_id)["status"] in {"connected", "progress", "closed", "error"}
    finally:
        for client_id in clients:
            client.post("/interrupt", params={"clientId": client_id})
    for client_id in clients:
        wait_final(client, client_id)


def test_a_failing_job_never_reaches_100(
    served: tuple[LiveServer, Bridge], client: httpx.Client, bridge_data: Path
) -> None:
    """Defect 7: after the error nothing moves the progress (ComfyUI's ``executing null`` included)."""
    client_id = new_id()
    socket = BridgeSocket(served[0].url, client_id)
    try:
        body = {"workflow": "image-to-image", "78/image": "broken.png", "3/seed": 3}
        assert generate(client, client_id, body).status_code == 200
        final = socket.wait_final()
    finally:
        socket.close()
    assert final["status"] == "error" and "78" in final["details"]
    assert "broken.png" in final["details"] and str(bridge_data) not in final["details"]
    progress = [m["details"] for m in socket.messages if m["status"] == "progress"]
    assert progress and "100.00%" not in progress
    assert socket.messages.index(final) == len(socket.messages) - 1


def test_an_unavailable_alias_names_no_server_path(client: httpx.Client, bridge_data: Path) -> None:
    """Defect 9a: the missing file is named relative to the workflows folder."""
    alias_file = bridge_data / "bridge" / "workflows" / "workflow_alias.json"
    before = alias_file.read_text()
    aliases = json.loads(before) | {"broken": {"file": "sub/missing.json", "inputs": []}}
    try:
        alias_file.write_text(json.dumps(aliases))
        os.utime(alias_file, (time.time() + 5, time.time() + 5))  # a change even within one mtime tick
        detail = client.get("/workflow-info", params={"workflow": "broken"}).json()["detail"]
    finally:
        alias_file.write_text(before)
    assert detail == "workflow 'broken' is unavailable: workflow file sub/missing.json does not exist"
    assert str(bridge_data) not in detail


def test_sweep_and_shutdown_message(demo_models: Path, demo_images: Path, tmp_path: Path) -> None:
    """Defects 5b (orphans swept at start and by the retention loop) and 8 (a last word before the
    server closes the sockets with 1012; the job stays queued)."""
    data = make_data_root(tmp_path / "data", demo_images)
    write_bridge_catalog(data)
    folder = data / "inputs" / BRIDGE_UPLOADS
    folder.mkdir()
    (folder / "orphan.png").write_bytes(png())
    os.utime(folder / "orphan.png", (time.time() - 7200, time.time() - 7200))
    env = FAST | {"GENSERVE_BRIDGE__RETENTION_HOURS": "0.0005"}  # 1.8 s
    with bridge_server(env, demo_models, data) as (live, bridge), live.client() as client:
        assert not (folder / "orphan.png").exists(), "swept at start"
        unused = attachment_upload(client, png()).json()["file"]
        assert (data / "inputs" / unused).exists()
        wait_for(lambda: not (data / "inputs" / unused).exists(), 20, "the unused upload to be swept")

        working, idle = new_id(), new_id()
        busy = BridgeSocket(live.url, working)
        quiet = BridgeSocket(live.url, idle)
        assert generate(client, working, {"workflow": SLOW, "90/seconds": 30}).status_code == 200
        busy.wait_progress()
        on_loop(bridge, bridge.announce_shutdown)
        busy.ended.wait(10)
        quiet.ended.wait(10)
        assert busy.messages[-1] == {
            "status": "error",
            "details": "server shutting down; the job stays queued and resumes after restart",
        }
        assert quiet.messages[-1] == {"status": "closed", "details": "server shutting down"}
        assert busy.ws.close_code == 1012 and quiet.ws.close_code == 1012
        assert bridge.active_jobs(working), "the job was not cancelled"
