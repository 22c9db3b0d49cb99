"""``genserve serve`` as a user runs it: a real process, its banner, a signal, a clean stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import small_env

URL = re.compile(r"REST\s+(http://127\.0\.0\.1:\d+)")
GRPC = re.compile(r"gRPC\s+(127\.0\.0\.1:\d+)")


def genserve() -> str:
    return str(Path(sys.executable).with_name("genserve"))


@pytest.fixture
def env(demo_models: Path, data_root: Path, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    return {**base, **small_env(demo_models, data_root)}


class Served:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url = ""
        self.grpc = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            found = URL.search(line)
            if found:
                self.url = found.group(1)
            found = GRPC.search(line)
            if found:
                self.grpc = found.group(1)

    def wait_url(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while not self.url:
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)
        return self.url

    @property
    def log(self) -> str:
        self._reader.join(10)
        return "".join(self.lines)


@pytest.fixture
def served(env: dict[str, str], tmp_path: Path) -> Iterator[Served]:
    process = subprocess.Popen(
        [genserve(), "serve", "--port", "0"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        yield Served(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


@pytest.mark.slow
def test_serve_prints_addresses_serves_and_stops_gracefully(
    served: Served, data_root: Path, env: dict[str, str]
) -> None:
    served_env = env
    url = served.wait_url()
    assert httpx.get(f"{url}/health/ready").status_code == 200
    log_so_far = "".join(served.lines)
    for what in ("API docs", f"{url}/docs", f"{url}/metrics", f"{url}/health/ready"):
        assert what in log_so_far
    # `genserve test` against the gRPC door started beside REST.
    port = served.grpc.rsplit(":", 1)[1]
    checked = subprocess.run(
        [genserve(), "test", "--port", port], env=served_env, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Echo -> HELLO" in checked.stdout and "health (server) -> SERVING" in checked.stdout

    # An edit of a few seconds is in flight when SIGTERM arrives: it must finish and answer.
    body = {
        "image1_path": str(data_root / "inputs/person.png"),
        "prompt": "x",
        "megapixels": 0.25,
        "sampling_params": {"steps": 12},
    }
    answers: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{url}/api/v1/edit", json=body, timeout=120))
    )
    sender.start()
    deadline = time.monotonic() + 60
    while 'genserve_inflight_work{device="cpu"} 1.0' not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline, "the edit never started"
        time.sleep(0.05)
    served.process.send_signal(signal.SIGTERM)
    sender.join(120)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert Path(answers[0].json()["image_file_path"]).is_file()
    assert served.process.wait(60) == 0
    log = served.log
    assert "shutting down" in log and "unloading diffusion_models/" in log and "stopped" in log
    assert "Traceback" not in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health/live")


def test_serve_refuses_a_busy_port_clearly(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [genserve(), "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr and "server.port" in done.stderr
    assert "Traceback" not in done.stderr


def test_test_command_fails_clearly_when_nothing_answers(env: dict[str, str]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: nothing answers
        done = subprocess.run(
            [genserve(), "test", "--port", str(port), "--timeout", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is not healthy: no gRPC server answered within 1 s" in done.stderr


def test_serve_help_explains_itself(env: dict[str, str]) -> None:
    done = subprocess.run(
        [genserve(), "serve", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for words in ("--host", "--port", "127.0.0.1:8000", "/docs", "/metrics", "SIGTERM"):
        assert words in done.stdout
