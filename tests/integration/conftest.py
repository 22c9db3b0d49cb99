"""Real servers on free loopback ports, driven by real clients.

``live_server`` runs genserve's own RestServer (uvicorn + the FastAPI app) in a thread, on a
port the OS picks, over a runtime built from the given settings, exactly as ``genserve serve``
does; leaving the block stops it the way a signal would (in-flight requests finish, then models
unload).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from genserve.api.grpc.server import GrpcDoor
from genserve.app.runtime import Runtime, build_runtime
from genserve.app.server import RestServer, bind
from genserve.config import Settings
from tests.conftest import small_settings


@dataclass
class LiveServer:
    url: str
    runtime: Runtime
    server: RestServer
    data: Path
    comfy_url: str | None = None  # ComfyUI's listener, when started

    def comfy_client(self, **kwargs: object) -> httpx.Client:
        assert self.comfy_url is not None, "started without the ComfyUI listener"
        return httpx.Client(base_url=self.comfy_url, timeout=kwargs.pop("timeout", 60.0), **kwargs)  # type: ignore[arg-type]

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60.0), **kwargs)  # type: ignore[arg-type]

    @property
    def grpc_target(self) -> str:
        assert self.server.grpc is not None, "started without the gRPC door"
        return self.server.grpc.addresses[0]

    def running(self) -> int:
        return sum(load.running for load in self.runtime.engine.loads())

    def waiting(self) -> int:
        return sum(load.waiting for load in self.runtime.engine.loads())


@contextmanager
def live_server(
    settings: Settings, data: Path, *, grpc: bool = False, comfy: bool = False
) -> Iterator[LiveServer]:
    """With ``grpc`` the gRPC door runs too, on the free port(s) the settings name; with
    ``comfy`` ComfyUI's listener, on a free loopback port."""
    runtime = build_runtime(settings)
    sock = bind("127.0.0.1", 0)
    comfy_sock = bind("127.0.0.1", 0) if comfy else None
    server = RestServer(runtime, sock, GrpcDoor(runtime) if grpc else None, comfy_sock=comfy_sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the REST server did not start")
        time.sleep(0.01)
    try:
        comfy_url = server.comfy.url if server.comfy is not None else None
        yield LiveServer(server.url, runtime, server, data, comfy_url)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
        if comfy_sock is not None:
            comfy_sock.close()


def wait_for(condition: object, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def make_data_root(root: Path, demo_images: Path) -> Path:
    (root / "inputs").mkdir(parents=True)
    (root / "outputs").mkdir()
    for image in demo_images.iterdir():
        shutil.copy(image, root / "inputs" / image.name)
    return root


@pytest.fixture(scope="module")
def module_data(tmp_path_factory: pytest.TempPathFactory, demo_images: Path) -> Path:
    return make_data_root(tmp_path_factory.mktemp("rest") / "data", demo_images)


@pytest.fixture(scope="module")
def server(demo_models: Path, module_data: Path) -> Iterator[LiveServer]:
    """One server per test module on the demo models, with small images (128x128)."""
    with live_server(small_settings(demo_models, module_data), module_data) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c
