"""The bridge over real genserve backends: one killed mid-run, all of them down, one coming back.

Each backend is a ``genserve serve --port 0`` process with its own data root (so its own input,
output and bridge files), reached through its ComfyUI API under ``/comfy`` exactly as a bridge in
production reaches a peer. The bridge itself runs in-process (``live_server``) with no local
backend, so every job it finishes went over HTTP and WebSocket to a backend process. Jobs are the
``slow`` alias (text-to-image plus a ``DelayImage`` node), which keeps a job on its backend long
enough to kill that backend in the middle of it.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from genserve.storage.jobs import JobState, JobStore
from tests.conftest import small_env, small_settings
from tests.integration.bridge_support import SLOW, multipart_files, write_bridge_catalog
from tests.integration.conftest import LiveServer, live_server, make_data_root, wait_for

URL = re.compile(r"REST\s+(http://127\.0\.0\.1:\d+)")  # the banner line `genserve serve` logs
PROBES = {"GENSERVE_BRIDGE__PROBE_INTERVAL_S": "0.3", "GENSERVE_BRIDGE__PROBE_TIMEOUT_S": "2"}


class BackendProcess:
    """One ``genserve serve`` child: its REST URL (read from its log) and its whole log for failures."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:  # read to the end, so a chatty child never blocks on its pipe
            self.lines.append(line)
            found = URL.search(line)
            if found and not self.url:
                self.url = found.group(1)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def comfy(self) -> str:
        return f"{self.url}/comfy"

    def wait_url(self, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.url:
            assert self.process.poll() is None, f"the backend exited before serving:\n{self.log}"
            assert time.monotonic() < deadline, f"the backend printed no REST URL in {timeout} s:\n{self.log}"
            time.sleep(0.05)
        return self.url

    def running_job(self) -> str | None:
        """The bridge job id (the prompt's client_id) this backend is running now, if any."""
        queue = httpx.get(f"{self.comfy}/queue", timeout=5).json()
        for entry in queue.get("queue_running", []):
            return str(entry[3]["client_id"])
        return None


@contextmanager
def genserve_backends(models: Path, *roots: Path, port: int = 0) -> Iterator[list[BackendProcess]]:
    """One backend process per data root, started together (they load in parallel), each serving
    until the block ends; any still running then is killed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    command = [str(Path(sys.executable).with_name("genserve")), "serve", "--port", str(port)]
    processes: list[subprocess.Popen[str]] = []
    try:
        for data in roots:
            own = env | small_env(models, data) | {"GENSERVE_GRPC__ENABLED": "false"}
            processes.append(
                subprocess.Popen(command, env=own, cwd=data.parent, stderr=subprocess.PIPE, text=True)
            )
        backends = [BackendProcess(p) for p in processes]
        for backend in backends:
            backend.wait_url()
        yield backends
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(30)


def backends_env(*backends: tuple[str, str]) -> str:
    """``bridge.backends`` as the YAML text of GENSERVE_BRIDGE__BACKENDS (one job at a time each)."""
    return "[" + ", ".join(f'{{name: {n}, url: "{u}", max_inflight: 1}}' for n, u in backends) + "]"


def closed_port() -> int:
    """A loopback port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def submit(client: httpx.Client, client_id: str, seed: int, seconds: float) -> httpx.Response:
    body = {"workflow": SLOW, "3/seed": seed, "90/seconds": seconds}
    return client.post("/generate-based-workflow", params={"clientId": client_id}, json=body)


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    """``wait_for`` at a gentler pace: the conditions here are HTTP round trips to other processes."""
    wait_for(lambda: condition() or time.sleep(0.1), timeout, what)


def finished(client: httpx.Client, client_id: str) -> dict[str, str] | None:
    info = client.get("/execution-info", params={"clientId": client_id}).json()
    return info if info.get("status") in ("closed", "error") else None


def take_png(client: httpx.Client, client_id: str) -> None:
    """The client's history holds exactly one PNG, and handing it out empties the history."""
    response = client.get("/history", params={"clientId": client_id})
    assert response.status_code == 200, (client_id, response.status_code, response.headers)
    files = multipart_files(response)
    assert len(files) == 1, (client_id, sorted(files))
    (filename, content_type, data), *_ = files.values()
    assert content_type == "image/png" and filename.endswith(".png"), (filename, content_type)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size[0] > 0
    assert client.get("/history", params={"clientId": client_id}).status_code == 204


@contextmanager
def bridge_over(models: Path, data: Path, backends: str) -> Iterator[LiveServer]:
    """The bridge in-process on ``data`` with only the given remote backends (no local one)."""
    write_bridge_catalog(data)
    settings = small_settings(models, data, GENSERVE_BRIDGE__BACKENDS=backends, **PROBES)
    with live_server(settings, data) as server:
        yield server


@pytest.mark.slow
def test_a_backend_killed_mid_run_loses_no_job(demo_models: Path, demo_images: Path, tmp_path: Path) -> None:
    clients = [f"client-{i}" for i in range(4)]
    a_data = make_data_root(tmp_path / "a" / "data", demo_images)
    b_data = make_data_root(tmp_path / "b" / "data", demo_images)
    bridge_data = make_data_root(tmp_path / "bridge" / "data", demo_images)
    with genserve_backends(demo_models, a_data, b_data) as (a, b):
        config = backends_env(("a", a.comfy), ("b", b.comfy))
        with bridge_over(demo_models, bridge_data, config) as bridge, bridge.client() as client:
            for seed, client_id in enumerate(clients, start=1):
                answer = submit(client, client_id, seed, 3.0)
                assert answer.status_code == 200, answer.text
                assert answer.json()["detail"].startswith("queued / ")

            cut: list[str] = []

            def a_runs_one() -> bool:
                cut[:] = [job] if (job := a.running_job()) else []
                return bool(cut)

            wait_until(a_runs_one, 60, "backend a to run one of the jobs")
            a.process.send_signal(signal.SIGKILL)
            assert a.process.wait(10) == -signal.SIGKILL

            for client_id in clients:
                wait_until(lambda c=client_id: finished(client, c), 120, f"{client_id}'s job to end")
                assert finished(client, client_id) == {
                    "status": "closed",
                    "details": "Execution is done",
                    "detail": "Execution is done",
                }, client_id
                take_png(client, client_id)
            assert client.get("/generation-count").json() == 4
            # The bridge deleted every prompt it collected from the survivor.
            assert httpx.get(f"{b.comfy}/history", timeout=5).json() == {}
            assert "Traceback" not in b.log, b.log

    with JobStore(bridge_data / "bridge" / "jobs.sqlite3") as store:
        jobs = {c: store.jobs_for_client(c) for c in clients}
        cut_job = store.get(cut[0])
    # One job per client (none lost, none duplicated), every one done on the survivor.
    assert {c: [(j.state, j.backend) for j in found] for c, found in jobs.items()} == {
        c: [(JobState.DONE, "b")] for c in clients
    }
    assert cut_job is not None and cut_job.state is JobState.DONE and cut_job.backend == "b"


def test_no_backend_available_is_a_clear_refusal(
    demo_models: Path, demo_images: Path, tmp_path: Path
) -> None:
    port = closed_port()
    bridge_data = make_data_root(tmp_path / "bridge" / "data", demo_images)
    gone = backends_env(("gone", f"http://127.0.0.1:{port}/comfy"))
    with bridge_over(demo_models, bridge_data, gone) as bridge, bridge.client() as client:
        for attempt in range(2):  # refusing once leaves the server as it was
            answer = submit(client, f"client-{attempt}", attempt, 0.0)
            assert answer.status_code == 400, answer.text
            detail = answer.json()["detail"]
            assert "no backend is available" in detail and "gone" in detail, detail
            assert f"127.0.0.1:{port}" in detail, detail
            listed = client.get("/workflow-list")
            assert listed.status_code == 200 and SLOW in listed.json()
        assert client.get("/generation-count").json() == 0
        assert client.get("/health/live").status_code == 200
        # Nothing was queued: the refused client is unknown to the bridge.
        assert client.get("/execution-info", params={"clientId": "client-0"}).status_code == 400


@pytest.mark.slow
def test_a_backend_coming_back_is_used_again(demo_models: Path, demo_images: Path, tmp_path: Path) -> None:
    port = closed_port()
    bridge_data = make_data_root(tmp_path / "bridge" / "data", demo_images)
    back_data = make_data_root(tmp_path / "back" / "data", demo_images)
    url = f"http://127.0.0.1:{port}/comfy"
    with (
        bridge_over(demo_models, bridge_data, backends_env(("back", url))) as bridge,
        bridge.client() as client,
    ):
        refused = submit(client, "early", 1, 0.0)
        assert refused.status_code == 400 and "no backend is available" in refused.json()["detail"]
        with genserve_backends(demo_models, back_data, port=port) as (back,):
            assert back.url == f"http://127.0.0.1:{port}"
            # The prober notices within an interval or two; until then submitting is refused.
            wait_until(lambda: submit(client, "late", 2, 0.5).status_code == 200, 30, "the bridge to accept")
            wait_until(lambda: finished(client, "late"), 90, "the job on the returned backend to end")
            assert finished(client, "late")["status"] == "closed"  # type: ignore[index]
            take_png(client, "late")
    with JobStore(bridge_data / "bridge" / "jobs.sqlite3") as store:
        assert [(j.state, j.backend) for j in store.jobs_for_client("late")] == [(JobState.DONE, "back")]
        assert store.jobs_for_client("early") == []


def upload_attachment(client: httpx.Client, data: bytes) -> str:
    """POST /upload as the spec's client sends it (no part name): the saved name under ``file``."""
    body = b'--b\r\nContent-Disposition: attachment; filename="me.png"\r\n\r\n' + data + b"\r\n--b--\r\n"
    response = client.post(
        "/upload", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["file"])


@pytest.mark.slow
def test_remote_uploads_and_interrupts_leave_nothing_behind(
    demo_models: Path, demo_images: Path, tmp_path: Path
) -> None:
    """A bridge upload reaches the backend in its subfolder (twice, for two jobs, without being
    refused as an overwrite); an interrupted prompt's history is deleted once it has stopped."""
    bridge_data = make_data_root(tmp_path / "bridge" / "data", demo_images)
    back_data = make_data_root(tmp_path / "back" / "data", demo_images)
    with (
        genserve_backends(demo_models, back_data) as (back,),
        bridge_over(demo_models, bridge_data, backends_env(("back", back.comfy))) as bridge,
        bridge.client() as client,
    ):
        person = (bridge_data / "inputs" / "person.png").read_bytes()
        saved = upload_attachment(client, person)
        for client_id, seed in (("up-1", 1), ("up-2", 2)):
            body = {"workflow": "image-to-image", "78/image": saved, "3/seed": seed}
            answer = client.post("/generate-based-workflow", params={"clientId": client_id}, json=body)
            assert answer.status_code == 200, answer.text
        for client_id in ("up-1", "up-2"):
            wait_until(lambda c=client_id: finished(client, c), 90, f"{client_id}'s job to end")
            assert finished(client, client_id)["details"] == "Execution is done"  # type: ignore[index]
            take_png(client, client_id)
        assert (back_data / "inputs" / saved).read_bytes() == person
        assert not (bridge_data / "inputs" / saved).exists(), "collected: the bridge's copy is gone"

        assert submit(client, "cut", 3, 30.0).status_code == 200
        wait_until(lambda: back.running_job() is not None, 60, "the backend to run the job")
        assert client.post("/interrupt", params={"clientId": "cut"}).status_code == 200
        wait_until(lambda: back.running_job() is None, 30, "the prompt to stop")
        history = f"{back.comfy}/history"
        wait_until(lambda: httpx.get(history, timeout=5).json() == {}, 10, "the history to be deleted")
        time.sleep(0.5)
        assert httpx.get(history, timeout=5).json() == {}
        assert finished(client, "cut")["details"] == "Execution was interrupted"  # type: ignore[index]
