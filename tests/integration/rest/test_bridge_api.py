"""The workflow bridge of spec 003 on a real server: the tutorial flow over httpx and a WebSocket,
every error in the spec's shape, uploads, interrupt and disconnect (each only for its own client),
and a restart with jobs still queued."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from genserve.storage.jobs import JobState, JobStore
from tests.conftest import small_settings
from tests.integration.bridge_support import SLOW, BridgeSocket, multipart_files, write_bridge_catalog
from tests.integration.conftest import LiveServer, live_server, make_data_root, wait_for

FAST = {"GENSERVE_BRIDGE__PROBE_INTERVAL_S": "0.2", "GENSERVE_BRIDGE__MAX_UPLOAD_MB": "0.5"}


@pytest.fixture(scope="module")
def bridge_data(tmp_path_factory: pytest.TempPathFactory, demo_images: Path) -> Path:
    data = make_data_root(tmp_path_factory.mktemp("bridge") / "data", demo_images)
    write_bridge_catalog(data)
    return data


@pytest.fixture(scope="module")
def server(demo_models: Path, bridge_data: Path) -> Iterator[LiveServer]:
    with live_server(small_settings(demo_models, bridge_data, **FAST), bridge_data) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def new_id() -> str:
    return uuid.uuid4().hex


def generate(client: httpx.Client, client_id: str, body: dict[str, Any]) -> httpx.Response:
    return client.post("/generate-based-workflow", params={"clientId": client_id}, json=body)


def info(client: httpx.Client, client_id: str) -> dict[str, str]:
    return client.get("/execution-info", params={"clientId": client_id}).json()


def wait_status(client: httpx.Client, client_id: str, *wanted: str, timeout: float = 120) -> dict[str, str]:
    wait_for(lambda: info(client, client_id)["status"] in wanted, timeout, f"{client_id} to reach {wanted}")
    return info(client, client_id)


def png(size: tuple[int, int] = (32, 32), noise: bool = False) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8) if noise else None
    image = Image.fromarray(pixels) if pixels is not None else Image.new("RGB", size, (10, 200, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_spec_tutorial_flow(server: LiveServer, client: httpx.Client, bridge_data: Path) -> None:
    """ws connect -> workflow-info -> upload -> generate -> progress -> history -> history gives 204."""
    count_before = client.get("/generation-count").json()
    client_id = new_id()
    socket = BridgeSocket(server.url, client_id)
    try:
        assert "image-to-image" in client.get("/workflow-list").json()
        inputs = client.get("/workflow-info", params={"workflow": "image-to-image"}).json()
        assert inputs["78/image"] == {
            "type": "str",
            "title": "Load Image",
            "class": "LoadImage",
            "default": "person.png",
        }
        assert inputs["3/seed"]["type"] == "int" and inputs["3/denoise"]["type"] == "float"

        person = (bridge_data / "inputs" / "person.png").read_bytes()
        uploaded = client.post("/upload", files={"my_face": ("face.png", person, "image/png")})
        assert uploaded.status_code == 200, uploaded.text
        saved = uploaded.json()["my_face"]
        assert saved.endswith("_face.png") and (bridge_data / "inputs" / saved).read_bytes() == person

        body = {"workflow": "image-to-image", "6/text": "the awesome cat", "78/image": saved, "3/seed": 1234}
        answer = generate(client, client_id, body)
        assert answer.status_code == 200 and answer.json()["detail"].startswith("queued / ")

        final = socket.wait_final()
        assert final == {"status": "closed", "details": "Execution is done"}
        socket.ended.wait(10)
        assert socket.ended.is_set(), "the server closes the socket after the job's final message"
    finally:
        socket.close()
    assert socket.messages[0] == {"status": "connected", "details": "server connected"}
    percents = [float(m["details"].rstrip("%")) for m in socket.messages if m["status"] == "progress"]
    assert len(percents) >= 3 and percents == sorted(percents) and percents[-1] == 100.0
    assert all(m["details"].endswith("%") for m in socket.messages if m["status"] == "progress")
    assert info(client, client_id) == {
        "status": "closed",
        "details": "Execution is done",
        "detail": "Execution is done",
    }

    history = client.get("/history", params={"clientId": client_id})
    assert history.status_code == 200 and history.headers["content-type"].startswith("multipart/form-data")
    files = multipart_files(history)
    assert len(files) == 1
    (filename, content_type, data) = next(iter(files.values()))
    assert filename.endswith(".png") and content_type == "image/png"
    assert Image.open(io.BytesIO(data)).format == "PNG"

    again = client.get("/history", params={"clientId": client_id})
    assert again.status_code == 204 and again.content == b""
    assert again.headers["x-detail"] == f"No contents with that client id / {client_id}"
    unknown = client.get("/history", params={"clientId": "never-seen"})
    assert unknown.status_code == 204
    assert unknown.headers["x-detail"] == (
        "The client ID has not been submitted to the server before. It is not recognized. / never-seen"
    )
    assert client.get("/generation-count").json() == count_before + 1
    # Nothing is left behind: the bridge's copy is gone, and so is the runner's output file.
    assert not any((bridge_data / "bridge" / "results").rglob("*.png"))
    assert not any((bridge_data / "outputs" / "workflows").rglob("image-to-image*"))


def test_errors_answer_400_with_a_detail_naming_the_problem(client: httpx.Client, server: LiveServer) -> None:
    def detail(response: httpx.Response) -> str:
        assert response.status_code == 400, response.text
        return response.json()["detail"]

    assert "clientId" in detail(client.post("/generate-based-workflow", json={"workflow": "text-to-image"}))
    assert "workflow" in detail(generate(client, new_id(), {"6/text": "x"}))
    assert "no-such" in detail(generate(client, new_id(), {"workflow": "no-such"}))
    named = detail(generate(client, new_id(), {"workflow": "text-to-image", "99/nothing": 1}))
    assert "99/nothing" in named and "6/text" in named
    assert "3/seed" in detail(generate(client, new_id(), {"workflow": "text-to-image", "3/seed": "abc"}))
    missing = detail(generate(client, new_id(), {"workflow": "image-to-image", "78/image": "absent.png"}))
    assert "node 78 (LoadImage), input 'image'" in missing and "absent.png" in missing
    not_json = client.post("/generate-based-workflow", params={"clientId": "x"}, content=b"{oops")
    assert "JSON" in detail(not_json)
    assert "workflow" in detail(client.get("/workflow-info"))
    assert "no-such" in detail(client.get("/workflow-info", params={"workflow": "no-such"}))
    assert "clientId" in detail(client.get("/execution-info"))
    assert "unknown clientId" in detail(client.get("/execution-info", params={"clientId": "never-seen"}))
    assert "unknown clientId" in detail(client.post("/interrupt", params={"clientId": "never-seen"}))
    assert "unknown clientId" in detail(client.post("/free", params={"clientId": "never-seen"}))
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url.replace("http://", "ws://") + "/ws", open_timeout=10)
    assert refused.value.response.status_code == 400
    assert b"clientId" in refused.value.response.body


def test_upload_refuses_fakes_oversize_and_path_tricks(client: httpx.Client, bridge_data: Path) -> None:
    before = set((bridge_data / "inputs").iterdir())

    def refused(files: list[tuple[str, tuple[str, bytes, str]]]) -> str:
        response = client.post("/upload", files=files)
        assert response.status_code == 400, response.text
        return response.json()["detail"]

    assert "not an image" in refused([("a", ("fake.png", b"just some text, not pixels", "image/png"))])
    big = png((700, 700), noise=True)
    assert len(big) > 0.5 * 2**20
    assert "larger than" in refused([("big", ("big.png", big, "image/png"))])
    assert "plain name" in refused([("x", ("../x.png", png(), "image/png"))])
    # One bad part refuses the whole upload: the good part before it is not kept either.
    both = [("good", ("good.png", png(), "image/png")), ("bad", ("bad.png", b"nope", "image/png"))]
    assert "'bad'" in refused(both)
    assert set((bridge_data / "inputs").iterdir()) == before
    two = client.post(
        "/upload", files=[("a", ("same.png", png(), "image/png")), ("b", ("same.png", png(), "image/png"))]
    )
    assert two.status_code == 200 and len(set(two.json().values())) == 2


def test_interrupt_cancels_only_that_clients_job(client: httpx.Client) -> None:
    first, second = new_id(), new_id()
    assert generate(client, first, {"workflow": SLOW, "90/seconds": 30, "3/seed": 1}).status_code == 200
    assert generate(client, second, {"workflow": SLOW, "90/seconds": 0.5, "3/seed": 2}).status_code == 200
    wait_status(client, first, "progress")
    answer = client.post("/interrupt", params={"clientId": first})
    assert answer.json() == {"detail": f"interrupted that clientId will be ignored. / {first}"}
    assert wait_status(client, first, "closed")["details"] == "Execution was interrupted"
    assert wait_status(client, second, "closed", "error")["details"] == "Execution is done"
    assert client.get("/history", params={"clientId": first}).status_code == 204
    assert client.get("/history", params={"clientId": second}).status_code == 200


def test_disconnect_cancels_only_that_clients_job(server: LiveServer, client: httpx.Client) -> None:
    leaving, staying = new_id(), new_id()
    socket = BridgeSocket(server.url, leaving)
    assert generate(client, leaving, {"workflow": SLOW, "90/seconds": 30, "3/seed": 3}).status_code == 200
    assert generate(client, staying, {"workflow": SLOW, "90/seconds": 0.5, "3/seed": 4}).status_code == 200
    socket.wait_progress()
    socket.close()
    assert wait_status(client, leaving, "closed")["details"] == "Execution was interrupted"
    assert wait_status(client, staying, "closed", "error")["details"] == "Execution is done"
    assert multipart_files(client.get("/history", params={"clientId": staying}))


def test_free_all_or_one_clients_backend(client: httpx.Client) -> None:
    assert client.post("/free").json() == {"detail": "server memory free now / ALL"}
    client_id = new_id()
    generate(client, client_id, {"workflow": "text-to-image", "3/seed": 9})
    wait_status(client, client_id, "closed", "error")
    assert client.post("/free", params={"clientId": client_id}).json() == {
        "detail": f"server memory free now / {client_id}"
    }


def test_restart_runs_the_jobs_still_queued(demo_models: Path, tmp_path: Path, demo_images: Path) -> None:
    data = make_data_root(tmp_path / "data", demo_images)
    write_bridge_catalog(data)
    settings = small_settings(demo_models, data, **FAST)
    clients = [new_id() for _ in range(3)]
    with live_server(settings, data) as first, first.client() as client:
        socket = BridgeSocket(first.url, clients[1])  # a client still waiting when the server stops
        for index, client_id in enumerate(clients):
            body = {"workflow": SLOW, "90/seconds": 1.5, "3/seed": index}
            assert generate(client, client_id, body).status_code == 200
        wait_status(client, clients[0], "progress")
    # It hears why its socket closes before the close, and that its job is kept.
    assert socket.ended.wait(10)
    assert socket.messages[-1] == {
        "status": "error",
        "details": "server shutting down; the job stays queued and resumes after restart",
    }
    with JobStore(data / "bridge" / "jobs.sqlite3") as store:
        states = [store.jobs_for_client(c)[0].state for c in clients]
    assert JobState.DONE not in states[1:] and all(not s.finished for s in states[1:])

    with live_server(settings, data) as second, second.client() as client:
        for client_id in clients:
            assert (
                wait_status(client, client_id, "closed", "error", timeout=90)["details"]
                == "Execution is done"
            )
            assert multipart_files(client.get("/history", params={"clientId": client_id}))
        assert client.get("/generation-count").json() == 3  # counted across the restart


@pytest.mark.slow
def test_a_job_longer_than_60_seconds_is_not_cut(
    demo_models: Path, tmp_path: Path, demo_images: Path
) -> None:
    data = make_data_root(tmp_path / "data", demo_images)
    write_bridge_catalog(data)
    settings = small_settings(demo_models, data, GENSERVE_BRIDGE__LISTENING_INTERVAL_S="10")
    with live_server(settings, data) as live, live.client() as client:
        client_id = new_id()
        socket = BridgeSocket(live.url, client_id)
        started = time.monotonic()
        try:
            assert generate(client, client_id, {"workflow": SLOW, "90/seconds": 62}).status_code == 200
            assert socket.wait_final(timeout=150) == {"status": "closed", "details": "Execution is done"}
        finally:
            socket.close()
        assert time.monotonic() - started > 62
        percents = [m["details"] for m in socket.messages if m["status"] == "progress"]
        assert len(percents) > 60 and percents[-1] == "100.00%"
        assert multipart_files(client.get("/history", params={"clientId": client_id}))
