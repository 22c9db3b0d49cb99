"""A server killed during a gRPC ``UploadFile`` leaves no temporary file for good: the next start
removes ``models/<kind>/.upload-<uuid>.part`` files that no live upload holds, and says so.

Real processes: ``genserve serve`` as a user runs it, a gRPC client streaming chunks, ``kill -9``
mid-stream. Every process started here is killed when the test ends, however it ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from genserve.api.grpc.gen import image_generation_pb2 as pb
from genserve.api.grpc.gen import image_generation_pb2_grpc as rpc
from tests.conftest import small_env
from tests.integration.conftest import make_data_root, wait_for

GRPC = re.compile(r"gRPC\s+(127\.0\.0\.1:\d+)")  # the banner line `genserve serve` logs
CHUNK = 64 * 1024


class Served:
    """One ``genserve serve`` process: its gRPC address (read from its log) and its whole log."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.grpc = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:  # read to the end, so the child never blocks on its pipe
            self.lines.append(line)
            found = GRPC.search(line)
            if found and not self.grpc:
                self.grpc = found.group(1)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_grpc(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while not self.grpc:
            assert self.process.poll() is None, f"the server exited:\n{self.log}"
            assert time.monotonic() < deadline, f"no gRPC address in {timeout} s:\n{self.log}"
            time.sleep(0.05)
        return self.grpc


@contextmanager
def serving(env: dict[str, str], cwd: Path) -> Iterator[Served]:
    command = [str(Path(sys.executable).with_name("genserve")), "serve", "--port", "0"]
    process = subprocess.Popen(command, env=env, cwd=cwd, stderr=subprocess.PIPE, text=True)
    try:
        served = Served(process)
        served.wait_grpc()
        yield served
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


@pytest.fixture
def env(demo_models: Path, demo_images: Path, tmp_path: Path) -> dict[str, str]:
    models = tmp_path / "models"
    shutil.copytree(demo_models, models)  # uploads write into it
    data = make_data_root(tmp_path / "data", demo_images)
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    return base | small_env(models, data) | {"GENSERVE_GRPC__ENABLED": "true"}


def temp_files(models: Path) -> list[Path]:
    return sorted(models.glob("*/.upload-*.part"))


def test_a_kill_during_upload_leaves_nothing_after_the_next_start(
    env: dict[str, str], tmp_path: Path
) -> None:
    models = Path(env["GENSERVE_MODELS__DIR"])
    release = threading.Event()

    def stalled() -> Iterator[pb.UploadFileRequest]:
        """Two chunks, then a client that stops sending (until the test lets it go)."""
        yield pb.UploadFileRequest(filename="loras/cut.safetensors", data=b"a" * CHUNK)
        yield pb.UploadFileRequest(data=b"b" * CHUNK)
        release.wait(60)

    try:
        with serving(env, tmp_path) as first, grpc.insecure_channel(first.grpc) as channel:
            call = rpc.ImageGenerationServiceStub(channel).UploadFile.future(stalled())
            wait_for(
                lambda: any(p.stat().st_size >= 2 * CHUNK for p in temp_files(models)), 30, "the .part file"
            )
            first.process.send_signal(signal.SIGKILL)
            assert first.process.wait(10) == -signal.SIGKILL
            assert call.exception(30) is not None  # the client hears the server is gone
        (left,) = temp_files(models)
        assert left.parent.name == "loras"
    finally:
        release.set()

    with serving(env, tmp_path) as second, grpc.insecure_channel(second.grpc) as channel:
        assert temp_files(models) == [], second.log
        assert f"removed loras/{left.name}" in second.log, second.log
        data = bytes(range(256)) * 1000
        chunks = [
            pb.UploadFileRequest(filename="loras/whole.safetensors", data=data[:CHUNK]),
            pb.UploadFileRequest(data=data[CHUNK:]),
        ]
        answer = rpc.ImageGenerationServiceStub(channel).UploadFile(iter(chunks), timeout=60)
        assert "uploaded loras/whole.safetensors (256000 bytes)" in answer.message
        assert str(models) not in answer.message, "no server path in an answer"
        assert (models / "loras" / "whole.safetensors").read_bytes() == data
        assert temp_files(models) == []
        assert not (models / "loras" / "cut.safetensors").exists()
