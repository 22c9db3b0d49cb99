"""The engine's limits seen through HTTP: a full queue answers 429, a deadline 504, a client
that disconnects stops its work, and 16 requests at once all succeed on one load of the model."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root, wait_for


@pytest.fixture
def one_slot(tmp_path: Path, demo_models: Path, demo_images: Path) -> Iterator[LiveServer]:
    """One worker and room for one waiting request."""
    data = make_data_root(tmp_path / "data", demo_images)
    settings = small_settings(
        demo_models, data, GENSERVE_ENGINE__QUEUE_SIZE="1", GENSERVE_SERVER__RETRY_AFTER_S="3"
    )
    with live_server(settings, data) as live:
        yield live


def long_edit(server: LiveServer) -> dict[str, object]:
    """An edit that runs for minutes (1000 steps at 0.25 MP) unless something stops it."""
    return {
        "image1_path": str(server.data / "inputs/person.png"),
        "prompt": "a long one",
        "megapixels": 0.25,
        "sampling_params": {"steps": 1000},
    }


def open_request(server: LiveServer, path: str, body: dict[str, object]) -> socket.socket:
    """Send a request on a raw socket and leave it waiting, so closing it is a real disconnect."""
    host, port = re.match(r"http://([^:]+):(\d+)", server.url).groups()  # type: ignore[union-attr]
    sock = socket.create_connection((host, int(port)))
    payload = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def service_count(server: LiveServer, service: str, outcome: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    pattern = (
        rf'genserve_service_duration_seconds_count\{{[^}}]*outcome="{outcome}",service="{service}"\}} (\S+)'
    )
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_full_queue_answers_429_with_retry_after(one_slot: LiveServer) -> None:
    running = open_request(one_slot, "/api/v1/edit", long_edit(one_slot))
    wait_for(lambda: one_slot.running() == 1, what="the first edit to start")
    waiting = open_request(one_slot, "/api/v1/edit", long_edit(one_slot))
    wait_for(lambda: one_slot.waiting() == 1, what="the second edit to queue")
    with one_slot.client() as client:
        response = client.post("/api/v1/edit", json=long_edit(one_slot))
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        body = response.json()
        assert body["error_code"] == "RESOURCE_EXHAUSTED" and "full" in body["error_message"]
        metrics = client.get("/metrics").text
        assert 'genserve_queue_depth{device="cpu"} 1.0' in metrics
        assert 'genserve_inflight_work{device="cpu"} 1.0' in metrics
        running.close()
        waiting.close()
        wait_for(lambda: one_slot.running() == 0 and one_slot.waiting() == 0, 30, "the queue to drain")
        # Capacity is back: a small request goes through.
        ok = client.post("/api/v1/latent/encode", json={"image_path": "inputs/person.png"})
        assert ok.status_code == 200, ok.text
    assert service_count(one_slot, "edit", "cancelled") == 2


def test_disconnect_cancels_the_running_work(one_slot: LiveServer) -> None:
    sock = open_request(one_slot, "/api/v1/edit", long_edit(one_slot))
    wait_for(lambda: one_slot.running() == 1, what="the edit to start")
    wait_for(lambda: one_slot.runtime.models.is_loaded("diffusion_models", "qwen_image_edit_2509_fp8_e4m3fn"))
    sock.close()
    # One sampling step is ~0.1 s here; the full run would take minutes.
    wait_for(lambda: one_slot.running() == 0, 10, "the cancelled edit to stop")
    wait_for(lambda: service_count(one_slot, "edit", "cancelled") == 1, 5, "the cancelled outcome")
    outputs = list((one_slot.data / "outputs").glob("*.jpg"))
    assert outputs == []  # nothing was written for the abandoned request


def test_deadline_answers_504_and_stops_the_work(one_slot: LiveServer) -> None:
    with one_slot.client() as client:
        response = client.post("/api/v1/edit", json=long_edit(one_slot), headers={"X-Request-Timeout": "1.5"})
    assert response.status_code == 504
    assert response.json()["error_code"] == "TIMEOUT" and "1.5 s" in response.json()["error_message"]
    wait_for(lambda: one_slot.running() == 0, 10, "the timed-out edit to stop")


def test_sixteen_concurrent_requests_succeed_on_one_model_load(server: LiveServer) -> None:
    with server.client() as client:
        latent = client.post("/api/v1/latent/encode", json={"image_path": "inputs/person.png"}).json()
        unloaded = client.post("/api/v1/models/vae/qwen_image_vae/unload")
        assert unloaded.status_code == 200
        before = next(m for m in client.get("/api/v1/models/stats").json()["models"] if m["kind"] == "vae")
    assert not before["loaded"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            body = {"latent_file": latent["latent_file_path"], "output_format": "png"}
            return await asyncio.gather(
                *(
                    client.post("/api/v1/decoding/decode", json=body, headers={"X-Request-ID": f"burst-{i}"})
                    for i in range(16)
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 16
    paths = {r.json()["image_file_path"] for r in responses}
    assert len(paths) == 16 and all(Path(p).is_file() for p in paths)
    assert {r.json()["request_id"] for r in responses} == {f"burst-{i}" for i in range(16)}
    with server.client() as client:
        after = next(m for m in client.get("/api/v1/models/stats").json()["models"] if m["kind"] == "vae")
    assert after["load_count"] == before["load_count"] + 1  # loaded once for all sixteen
    assert after["request_count"] == before["request_count"] + 16
