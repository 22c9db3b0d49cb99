"""A maintained ComfyUI client library (comfy-api-simplified), unchanged, against genserve's ComfyUI
listener with its documented base URL: upload, queue, wait on the WebSocket, history, download.

The library joins every path with ``urljoin(base, "/...")``, so it works only where ComfyUI's
routes are at the root: what the listener is for."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper
from PIL import Image

from genserve.workflows.demo import CLOTH, PERSON, demo_workflow
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root


@pytest.fixture(scope="module")
def listener(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[LiveServer]:
    data = make_data_root(tmp_path_factory.mktemp("client-library") / "data", demo_images)
    with live_server(small_settings(demo_models, data), data, comfy=True) as live:
        yield live


@pytest.fixture
def api(listener: LiveServer) -> ComfyApiWrapper:
    assert listener.comfy_url is not None
    return ComfyApiWrapper(listener.comfy_url)


def test_uploads_queue_wait_and_download_an_edit(api: ComfyApiWrapper, demo_images: Path) -> None:
    uploaded = {name: api.upload_image(demo_images / name, subfolder="library") for name in (PERSON, CLOTH)}
    assert all(answer["subfolder"] == "library" for answer in uploaded.values())

    workflow = ComfyWorkflowWrapper(demo_workflow("image-edit"))
    workflow.set_node_param("Person", "image", f"library/{uploaded[PERSON]['name']}")
    workflow.set_node_param("Cloth", "image", f"library/{uploaded[CLOTH]['name']}")
    workflow.set_node_param("KSampler", "seed", 7)
    images = api.queue_and_wait_images(workflow, "Save Image")

    assert len(images) == 1
    ((name, data),) = images.items()
    assert name.startswith("edit") and name.endswith(".png")
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.width > 0


def test_server_facts_through_the_library(api: ComfyApiWrapper) -> None:
    assert api.get_system_stats()["devices"]
    assert api.get_embeddings() == []
    info = api.get_object_info("KSampler")["KSampler"]
    assert info["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert api.get_queue() == {"queue_running": [], "queue_pending": []}
