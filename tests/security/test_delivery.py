"""Nothing lost on delivery: ``GET /history`` deletes a client's results only once its answer was
written to the end, and its multipart part headers cannot be broken by a result's name.

The bridge runs on this server's own runner with a ``copy`` workflow (LoadImage -> SaveImage), so
a result is exactly an image the test placed in the input folder: a noisy one of about 14 MB, more
than the socket buffers between a client and the server hold, for the dropped connection.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from genserve.cli.workflow import parse_multipart
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root, wait_for

BIG = "big.png"
BIG_SIDE = 2200  # 2200x2200 noise: a PNG of about 14.5 MB
COPY = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "copy"}},
}


@pytest.fixture(scope="module")
def big_pixels() -> np.ndarray:
    return np.random.default_rng(21).integers(0, 256, (BIG_SIDE, BIG_SIDE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path, big_pixels: np.ndarray
) -> Iterator[LiveServer]:
    data = make_data_root(tmp_path_factory.mktemp("delivery") / "data", demo_images)
    Image.fromarray(big_pixels).save(data / "inputs" / BIG, compress_level=1)
    folder = data / "bridge" / "workflows"
    folder.mkdir(parents=True)
    (folder / "copy.json").write_text(json.dumps(COPY))
    aliases = {"copy": {"file": "copy.json", "inputs": ["1/image", "2/filename_prefix"]}}
    (folder / "workflow_alias.json").write_text(json.dumps(aliases))
    with live_server(small_settings(demo_models, data), data) as live:
        yield live


def run_copy(client: httpx.Client, client_id: str, **inputs: Any) -> None:
    """Queue the copy workflow for ``client_id`` and wait until its results are stored."""
    body = {"workflow": "copy", **inputs}
    answer = client.post("/generate-based-workflow", params={"clientId": client_id}, json=body)
    assert answer.status_code == 200, answer.text

    def done() -> bool:
        status = client.get("/execution-info", params={"clientId": client_id}).json()
        assert status["status"] != "error", status
        return status["status"] == "closed"

    wait_for(lambda: done() or time.sleep(0.1), 120, f"{client_id}'s job to finish")


def read_part_then_drop(url: str, client_id: str, keep: int = 64 * 1024) -> int:
    """GET /history on a raw socket with a small receive buffer: read ``keep`` bytes, then drop the
    connection (a reset, as a crashed client's). Returns the Content-Length the server announced."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    raw = socket.socket()
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(30)
        raw.connect((host, port))
        raw.sendall(f"GET /history?clientId={client_id} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        received = b""
        while len(received) < keep:
            chunk = raw.recv(4096)
            assert chunk, f"the server closed after {len(received)} bytes: {received[:300]!r}"
            received += chunk
        head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        assert head.startswith("HTTP/1.1 200"), head
        length = next(
            int(line.split(":")[1])
            for line in head.split("\r\n")
            if line.lower().startswith("content-length:")
        )
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return length
    finally:
        raw.close()


def test_a_dropped_answer_loses_nothing_and_a_full_read_empties_the_history(
    server: LiveServer, big_pixels: np.ndarray
) -> None:
    results_dir = server.runtime.settings.bridge.results_dir
    with server.client() as client:
        run_copy(client, "dropper", **{"1/image": BIG})
        stored = sorted(p for p in results_dir.rglob("*") if p.is_file())
        assert len(stored) == 1

        length = read_part_then_drop(server.url, "dropper")
        assert length > 12 * 1024 * 1024, "it must outgrow the socket buffers (4 MB by default)"
        time.sleep(0.5)  # the server notices the reset
        assert stored[0].is_file(), "a dropped answer deletes nothing"

        retry = client.get("/history", params={"clientId": "dropper"})
        assert retry.status_code == 200, (retry.status_code, retry.headers)
        assert int(retry.headers["content-length"]) == len(retry.content) == length
        parts = parse_multipart(retry.headers["content-type"], retry.content)
        assert [p.content_type for p in parts] == ["image/png"]
        with Image.open(io.BytesIO(parts[0].data)) as image:
            assert np.array_equal(np.asarray(image.convert("RGB")), big_pixels)

        # Read to the end: the spec's "history is read once" holds, files included.
        again = client.get("/history", params={"clientId": "dropper"})
        assert again.status_code == 204, again.headers
        assert not stored[0].exists()


def test_result_names_cannot_break_the_part_headers(server: LiveServer) -> None:
    prefix = 'evil\r\nX-Injected: 1\r\n\r\n"naïve" 한글'
    with server.client() as client:
        run_copy(client, "names", **{"2/filename_prefix": prefix})
        answer = client.get("/history", params={"clientId": "names"})
    assert answer.status_code == 200
    heads = [block for block in answer.content.split(b"\r\n\r\n") if b"Content-Disposition" in block]
    assert len(heads) == 1 and b"\r\nX-Injected" not in answer.content
    parts = parse_multipart(answer.headers["content-type"], answer.content)
    assert len(parts) == 1
    escaped = "evil%0D%0AX-Injected: 1%0D%0A%0D%0A%22naïve%22 한글"
    assert parts[0].name.startswith(escaped) and parts[0].name.endswith(".png"), parts[0].name
    assert parts[0].filename == parts[0].name
    assert parts[0].content_type == "image/png"
    with Image.open(io.BytesIO(parts[0].data)) as image:
        assert image.format == "PNG"
