"""Images from hostile clients against a real server: sized from the header before decoding on
every door that takes one, refused as INVALID_INPUT naming the field, never a 500, never a path."""

from __future__ import annotations

import io
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from PIL import Image

from genserve.api.grpc.gen import pipeline_pb2 as pb
from genserve.api.grpc.gen import pipeline_pb2_grpc as rpc
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root
from tests.integration.grpc.conftest import error_code, open_channel

COMFY = "/comfy"
LIMIT = 4096 * 4096  # the module's server's limit (the default, 50 MP, takes too long to exceed here)
BIG_SIDE = 5000  # 25 MP: past that limit, yet small enough to decode in a test


def png_header_only(width: int, height: int) -> bytes:
    """A few hundred bytes that declare ``width`` x ``height`` pixels and hold none."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bilevel_png(side: int) -> bytes:
    """A complete, decodable ``side`` x ``side`` image of a few kB (one bit per pixel, all black)."""
    buffer = io.BytesIO()
    Image.new("1", (side, side), color=0).save(buffer, format="PNG")
    return buffer.getvalue()


BIG = bilevel_png(BIG_SIDE)
BOMB = png_header_only(30_000, 30_000)
TRUNCATED = png_header_only(64, 64)  # a valid header, too little pixel data


@pytest.fixture(scope="module")
def module_data(tmp_path_factory: pytest.TempPathFactory, demo_images: Path) -> Path:
    data = make_data_root(tmp_path_factory.mktemp("images") / "data", demo_images)
    inputs = data / "inputs"
    (inputs / "big.png").write_bytes(BIG)
    (inputs / "bomb.png").write_bytes(BOMB)
    (inputs / "truncated.png").write_bytes(TRUNCATED)
    (inputs / "x.png").write_text("this is text, named like an image")
    return data


@pytest.fixture(scope="module")
def server(demo_models: Path, module_data: Path) -> Iterator[LiveServer]:
    """Every door on: REST (pipeline, ComfyUI, bridge) and gRPC, default image limit."""
    settings = small_settings(demo_models, module_data, GENSERVE_STORAGE__MAX_IMAGE_PIXELS=str(LIMIT))
    with live_server(settings, module_data, grpc=True) as live:
        yield live


@pytest.fixture(scope="module")
def channel(server: LiveServer) -> Iterator[grpc.Channel]:
    with open_channel(server.grpc_target) as ch:
        yield ch


def leaks(server: LiveServer, text: str) -> list[str]:
    markers = {
        str(server.data),
        str(server.data.parent),
        tempfile.gettempdir(),
        "/tmp",
        "/work",
        str(Path.cwd()),
    }
    return sorted(marker for marker in markers if marker in text)


def refused(server: LiveServer, response: httpx.Response, field: str, *words: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text[:1000]
    assert not leaks(server, response.text), response.text[:1000]
    body = response.json()
    assert body["error_code"] == "INVALID_INPUT" and body["details"]["field"] == field, body
    for word in (field, *words):
        assert word in body["error_message"], body["error_message"]
    return body


def test_the_default_limit_is_50_megapixels() -> None:
    from genserve.config import StorageSettings

    assert StorageSettings().max_image_pixels == 50_000_000  # a 48 MP phone photo passes


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/api/v1/latent/encode", {"image_path": "inputs/big.png"}, "image_path"),
        (
            "/api/v1/text/encode",
            {"image1_path": "inputs/person.png", "image2_path": "inputs/big.png", "prompt": "x"},
            "image2_path",
        ),
        ("/api/v1/edit", {"image1_path": "inputs/big.png", "prompt": "x"}, "image1_path"),
    ],
)
def test_pipeline_services_refuse_images_past_the_limit(
    client: httpx.Client, server: LiveServer, route: str, body: dict[str, Any], field: str
) -> None:
    """A 5000x5000 image was decoded and encoded; now it is refused from its header."""
    err = refused(server, client.post(route, json=body), field, "5000x5000", "storage.max_image_pixels")
    assert "inputs/big.png" in err["error_message"]


@pytest.mark.parametrize("name", ["bomb.png", "truncated.png", "x.png"])
def test_pipeline_decode_errors_name_the_field_and_the_clients_path(
    client: httpx.Client, server: LiveServer, name: str
) -> None:
    """``image_path: 'inputs/x.png' is not an image (...)``: the client's name, not the server's path."""
    response = client.post("/api/v1/latent/encode", json={"image_path": f"inputs/{name}"})
    err = refused(server, response, "image_path", f"'inputs/{name}'")
    if name == "x.png":
        assert "is not an image (cannot identify image file" in err["error_message"]


def upload(server: LiveServer, name: str, data: bytes) -> httpx.Response:
    with httpx.Client(base_url=server.url + COMFY, timeout=60.0) as client:
        return client.post("/upload/image", files={"image": (name, data, "image/png")})


def test_comfy_upload_refuses_a_header_bomb_with_400(server: LiveServer) -> None:
    """429 bytes declaring 30000x30000 answered 500 (Pillow's DecompressionBombError escaped)."""
    assert len(BOMB) < 500
    response = upload(server, "bomb.png", BOMB)
    assert response.status_code == 400, response.text
    assert "900000000 pixels" in response.text and "storage.max_image_pixels" in response.text
    assert not leaks(server, response.text)
    assert not (server.data / "inputs" / "bomb (1).png").exists()


def test_comfy_upload_refuses_images_past_the_limit(server: LiveServer) -> None:
    response = upload(server, "huge.png", BIG)
    assert response.status_code == 400, response.text
    assert "storage.max_image_pixels" in response.text
    assert not (server.data / "inputs" / "huge.png").exists()
    small = upload(server, "small.png", (server.data / "inputs" / "person.png").read_bytes())
    assert small.status_code == 200, small.text


def test_bridge_upload_refuses_images_past_the_limit(server: LiveServer, client: httpx.Client) -> None:
    before = set((server.data / "inputs").rglob("*"))
    response = client.post("/upload", files={"face": ("face.png", BIG, "image/png")})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "'face'" in detail and "5000x5000" in detail and "storage.max_image_pixels" in detail
    assert set((server.data / "inputs").rglob("*")) == before


def run_prompt(server: LiveServer, prompt: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """POST /comfy/prompt and wait for its history entry."""
    with httpx.Client(base_url=server.url + COMFY, timeout=60.0) as client:
        answer = client.post("/prompt", json={"prompt": prompt})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = client.get(f"/history/{prompt_id}").json().get(prompt_id)
            if entry:  # a prompt has a history entry once it finished
                return entry
            time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish")


@pytest.mark.parametrize(
    ("image", "words"), [("big.png", ["5000x5000", "storage.max_image_pixels"]), ("x.png", ["not an image"])]
)
def test_load_image_node_refuses_images_past_the_limit(
    server: LiveServer, image: str, words: list[str]
) -> None:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "sec_images"}},
    }
    entry = run_prompt(server, prompt)
    assert entry["status"]["status_str"] == "error", entry
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert errors, entry
    message = errors[0]["exception_message"]
    assert message.startswith("image: ") and f"'{image}'" in message, message
    for word in words:
        assert word in message, message
    assert not leaks(server, str(entry)), entry


def test_grpc_encode_refuses_big_images_and_long_paths(channel: grpc.Channel, server: LiveServer) -> None:
    stub = rpc.LatentEncoderStub(channel)
    for image_path, words in [
        ("inputs/big.png", ["image_path", "5000x5000"]),
        ("inputs/x.png", ["image_path", "'inputs/x.png'", "not an image"]),
        ("a" * 5000, ["image_path", "at most"]),
        ("inputs/" + "b" * 300 + ".png", ["image_path", "at most 255"]),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            stub.EncodeImage(pb.EncodeRequest(image_path=image_path))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert error_code(info.value) == "INVALID_INPUT"
        details = info.value.details() or ""
        assert not leaks(server, details), details
        for word in words:
            assert word in details, details


def test_the_limit_is_the_configured_one(demo_models: Path, tmp_path: Path, demo_images: Path) -> None:
    """``storage.max_image_pixels`` set to 160x160: the 160x160 cloth passes, the 192x256 person does not."""
    data = make_data_root(tmp_path / "data", demo_images)
    settings = small_settings(demo_models, data, GENSERVE_STORAGE__MAX_IMAGE_PIXELS=str(160 * 160))
    with live_server(settings, data) as live, live.client() as client:
        ok = client.post("/api/v1/latent/encode", json={"image_path": "inputs/cloth.png"})
        assert ok.status_code == 200, ok.text
        response = client.post("/api/v1/latent/encode", json={"image_path": "inputs/person.png"})
        refused(live, response, "image_path", "192x256", "storage.max_image_pixels = 25600")
        with httpx.Client(base_url=live.url + COMFY, timeout=60.0) as comfy:
            person = (data / "inputs" / "person.png").read_bytes()
            answer = comfy.post("/upload/image", files={"image": ("p.png", person, "image/png")})
        assert answer.status_code == 400 and "192x256" in answer.text
