"""Logs and errors of a real ``genserve serve`` process: every log line bounded by
``logging.max_line_bytes``, no traceback logged for a client's mistake, and none in any answer
(ComfyUI's history keeps its field names, with one line and no traceback)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import small_env

MAX_LINE = 16_384  # logging.max_line_bytes's default
URL = re.compile(rb"REST\s+(http://127\.0\.0\.1:\d+)")


class Served:
    """A ``genserve serve`` process and every line it logged, as bytes."""

    def __init__(self, process: subprocess.Popen[bytes], data: Path) -> None:
        self.process = process
        self.data = data
        self.lines: list[bytes] = []
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            found = URL.search(line)
            if found and not self.url:
                self.url = found.group(1).decode()

    def wait_url(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while not self.url:
            assert self.process.poll() is None, b"".join(self.lines)[-4000:]
            assert time.monotonic() < deadline, b"".join(self.lines)[-4000:]
            time.sleep(0.05)
        return self.url

    def logged_during(self, client: httpx.Client, request: Any) -> tuple[httpx.Response, list[bytes]]:
        """The answer to ``request(client)`` and the lines logged until a marker request's line."""
        start = len(self.lines)
        answer = request(client)
        marker = f"marker-{uuid.uuid4().hex}"
        client.get("/health/live", headers={"x-request-id": marker})
        deadline = time.monotonic() + 20
        while not any(marker.encode() in line for line in self.lines[start:]):
            assert time.monotonic() < deadline, "the marker request was never logged"
            time.sleep(0.02)
        return answer, self.lines[start:]


@pytest.fixture(scope="module", params=["text", "json"])
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    demo_models: Path,
    demo_images: Path,
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp(f"logs-{request.param}")
    data = root / "data"
    (data / "inputs").mkdir(parents=True)
    (data / "outputs").mkdir()
    for image in demo_images.iterdir():
        (data / "inputs" / image.name).write_bytes(image.read_bytes())
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    env = {
        **base,
        **small_env(demo_models, data),
        "GENSERVE_LOGGING__JSON_LINES": str(request.param == "json").lower(),
    }
    genserve = str(Path(sys.executable).with_name("genserve"))
    process = subprocess.Popen([genserve, "serve", "--port", "0"], env=env, cwd=root, stderr=subprocess.PIPE)
    try:
        served = Served(process, data)
        served.wait_url()
        yield served
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=120) as c:
        yield c


def longest(lines: list[bytes]) -> int:
    return max((len(line.rstrip(b"\n")) for line in lines), default=0)


def test_a_60_kb_url_makes_a_bounded_access_log_line(served: Served, client: httpx.Client) -> None:
    answer, lines = served.logged_during(client, lambda c: c.get("/" + "a" * 60_000))
    assert answer.status_code == 404
    assert any(b"aaaa" in line for line in lines)
    assert longest(lines) <= MAX_LINE, longest(lines)


def test_a_deep_output_dir_writes_little_to_the_log(served: Served, client: httpx.Client) -> None:
    """A 4 KB request once wrote 3.3 MB of traceback."""
    body = {"image_path": str(served.data / "inputs" / "person.png"), "output_dir": "c/" * 2000}
    answer, lines = served.logged_during(client, lambda c: c.post("/api/v1/latent/encode", json=body))
    assert answer.status_code != 200
    assert "Traceback" not in answer.text
    assert sum(len(line) for line in lines) <= 3 * MAX_LINE, sum(len(line) for line in lines)
    assert longest(lines) <= MAX_LINE
    if answer.status_code < 500:  # a client's mistake: one line, never a traceback
        assert not any(b"Traceback" in line for line in lines), b"".join(lines)[:2000]


def test_history_keeps_one_line_and_no_traceback(served: Served, client: httpx.Client) -> None:
    (served.data / "inputs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "broken"}},
    }

    def run(c: httpx.Client) -> httpx.Response:
        queued = c.post("/comfy/prompt", json={"prompt": prompt, "client_id": "logs"})
        assert queued.status_code == 200, queued.text
        prompt_id = queued.json()["prompt_id"]
        deadline = time.monotonic() + 60
        while True:
            history = c.get(f"/comfy/history/{prompt_id}")
            if history.json():
                return history
            assert time.monotonic() < deadline, "the prompt never reached the history"
            time.sleep(0.05)

    history, lines = served.logged_during(client, run)
    (entry,) = history.json().values()
    assert entry["status"]["status_str"] == "error"
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert len(errors) == 1
    error = errors[0]
    # ComfyUI's fields, all there
    assert {"node_id", "node_type", "exception_message", "exception_type", "traceback"} <= set(error)
    assert error["node_id"] == "1" and error["node_type"] == "LoadImage"
    assert error["traceback"] == []
    assert error["exception_message"] and "\n" not in error["exception_message"]
    text = json.dumps(entry)
    for leak in ("Traceback", 'File "', ".py", str(served.data), "/work/", "site-packages"):
        assert leak not in text, (leak, error)
    assert longest(lines) <= MAX_LINE
