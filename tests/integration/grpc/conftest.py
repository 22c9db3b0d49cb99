"""A live server with the gRPC door on a free port, and channels to it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[LiveServer]:
    """Its own copy of the demo models (uploads write into it), a 1 MiB upload limit."""
    import shutil

    root = tmp_path_factory.mktemp("grpc")
    models = root / "models"
    shutil.copytree(demo_models, models)
    data = make_data_root(root / "data", demo_images)
    settings = small_settings(models, data, GENSERVE_GRPC__UPLOAD_MAX_MB="1")
    with live_server(settings, data, grpc=True) as live:
        yield live


@contextmanager
def open_channel(target: str, limit_mb: int = 200) -> Iterator[grpc.Channel]:
    """A ready channel whose message limits in both directions are ``limit_mb``."""
    limit = limit_mb * 1024 * 1024
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(target, options=options) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


@pytest.fixture(scope="module")
def channel(server: LiveServer) -> Iterator[grpc.Channel]:
    with open_channel(server.grpc_target) as ch:
        yield ch


def error_code(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("error-code")  # type: ignore[attr-defined]
