"""The drop folder beside a running server, fed what a hostile writer can put there: a FIFO, a
symlink out of the folder, an oversized file, deep JSON. Each is refused into failed/ with the
spec's error response, naming no path and echoing nothing read, while REST and gRPC answer."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.api.files import FileDoor
from genserve.api.grpc.server import GrpcDoor
from genserve.app.runtime import build_runtime
from genserve.app.server import RestServer, bind
from tests.conftest import small_settings
from tests.integration.conftest import make_data_root

SECRET_KEY = "secret_key_from_outside"


@dataclass
class Served:
    url: str
    grpc_target: str
    drop: Path
    outputs: Path
    data: Path


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[Served]:
    """``genserve serve`` with REST, gRPC and the drop folder on one event loop, as it runs."""
    data = make_data_root(tmp_path_factory.mktemp("drop") / "data", demo_images)
    drop, outputs = data / "drop", data / "outputs" / "drop"
    settings = small_settings(
        demo_models,
        data,
        GENSERVE_FILES__ENABLED="true",
        GENSERVE_FILES__INPUT_DIR=str(drop),
        GENSERVE_FILES__OUTPUT_DIR=str(outputs),
        GENSERVE_FILES__POLL_INTERVAL_S="0.05",
        GENSERVE_FILES__MAX_REQUEST_BYTES="4096",
    )
    runtime = build_runtime(settings)
    sock = bind("127.0.0.1", 0)
    grpc_door = GrpcDoor(runtime)
    server = RestServer(runtime, sock, grpc_door, [FileDoor(runtime)])
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield Served(server.url, grpc_door.addresses[0], drop, outputs, data)
    finally:
        release_fifos(drop)  # a door that blocked on one would never stop
        server.should_exit = True
        thread.join(60)
        sock.close()


def release_fifos(drop: Path) -> None:
    """Open every FIFO left in the folder for writing, which ends a reader's wait in open()."""
    for path in drop.rglob("request_*.json"):
        if path.is_fifo():
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def response(served: Served, request_id: str, timeout: float = 20) -> dict[str, Any]:
    path = served.outputs / f"response_{request_id}.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no response for {request_id}"
        time.sleep(0.02)
    return json.loads(path.read_text())


def assert_refused_plainly(served: Served, answer: dict[str, Any], code: str) -> None:
    assert answer["status"] == "error" and answer["error_code"] == code, answer
    text = json.dumps(answer)
    assert SECRET_KEY not in text
    for root in (str(served.data), "/tmp/", "/work/"):
        assert root not in text, answer


def assert_answers_promptly(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=3) as client:
        started = time.monotonic()
        assert client.get("/health/live").status_code == 200
        assert time.monotonic() - started < 2
    with grpc.insecure_channel(served.grpc_target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_fifo_is_refused_and_rest_and_grpc_keep_answering(served: Served) -> None:
    os.mkfifo(served.drop / "request_fifo.json")
    time.sleep(0.3)  # several polls: an old door would now sit in open() on the event loop
    assert_answers_promptly(served)
    answer = response(served, "fifo")
    assert_refused_plainly(served, answer, "INVALID_INPUT")
    assert "regular file" in answer["error_message"]
    assert (served.drop / "failed" / "request_fifo.json").is_fifo()
    assert (
        json.loads((served.drop / "failed" / "response_fifo.json").read_text())["error_code"]
        == "INVALID_INPUT"
    )
    assert_answers_promptly(served)


def test_a_symlink_out_of_the_folder_is_not_followed(served: Served, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps({SECRET_KEY: 1, "service": "latent_encoder"}))
    (served.drop / "request_link.json").symlink_to(outside)
    answer = response(served, "link")
    assert_refused_plainly(served, answer, "INVALID_INPUT")
    assert (served.drop / "failed" / "request_link.json").is_symlink()
    assert json.loads(outside.read_text())[SECRET_KEY] == 1  # untouched


def test_a_symlink_to_a_fifo_is_not_followed_either(served: Served, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (served.drop / "request_pipelink.json").symlink_to(fifo)
    assert_refused_plainly(served, response(served, "pipelink"), "INVALID_INPUT")
    assert_answers_promptly(served)


def test_a_folder_named_like_a_request_is_refused(served: Served) -> None:
    (served.drop / "request_folder.json").mkdir()
    assert_refused_plainly(served, response(served, "folder"), "INVALID_INPUT")


def test_a_file_over_the_size_limit_is_refused_naming_the_setting(served: Served) -> None:
    body = {"service": "latent_encoder", "input": {"image_path": "x" * 8000}}
    temp = served.drop / ".request_big.json.tmp"
    temp.write_text(json.dumps(body))
    temp.rename(served.drop / "request_big.json")
    answer = response(served, "big")
    assert_refused_plainly(served, answer, "PAYLOAD_TOO_LARGE")
    assert "files.max_request_bytes" in answer["error_message"]


def test_deep_json_in_a_request_file_is_refused_naming_the_setting(served: Served) -> None:
    temp = served.drop / ".request_deep.json.tmp"
    temp.write_text("[" * 1000 + "]" * 1000)
    temp.rename(served.drop / "request_deep.json")
    answer = response(served, "deep")
    assert_refused_plainly(served, answer, "INVALID_INPUT")
    assert "server.max_json_depth" in answer["error_message"]


def test_unknown_keys_are_named_briefly(served: Served) -> None:
    body = {f"{'k' * 150}{i}": i for i in range(20)} | {"service": "latent_encoder", "input": {}}
    temp = served.drop / ".request_keys.json.tmp"
    temp.write_text(json.dumps(body))
    temp.rename(served.drop / "request_keys.json")
    answer = response(served, "keys")
    assert answer["error_code"] == "INVALID_INPUT"
    assert len(answer["error_message"]) < 600 and "more" in answer["error_message"]


def test_a_good_request_still_runs(served: Served) -> None:
    temp = served.drop / ".request_good.json.tmp"
    image = served.data / "inputs" / "person.png"
    temp.write_text(json.dumps({"service": "latent_encoder", "input": {"image_path": str(image)}}))
    temp.rename(served.drop / "request_good.json")
    answer = response(served, "good", timeout=120)
    assert answer["status"] == "success", answer
