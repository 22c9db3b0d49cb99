"""Every spec example through HTTP: the request as the spec writes it (paths adapted), the fields
it promises, with real shapes and metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image

from genserve.services.pipeline import examples
from tests.integration.conftest import LiveServer


def post(client: httpx.Client, path: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["status"] == "success"
    assert response.headers["x-request-id"] == data["request_id"]
    return data


@pytest.fixture(scope="module")
def chain(server: LiveServer) -> dict[str, str]:
    """A small latent and encodings made through the server, for the later stages' examples."""
    inputs = server.data / "inputs"
    with server.client() as client:
        latent = post(client, "/api/v1/latent/encode", {"image_path": str(inputs / "person.png")})
        enc = post(
            client,
            "/api/v1/text/encode",
            {
                "image1_path": str(inputs / "person.png"),
                "image2_path": str(inputs / "cloth.png"),
                "prompt": "x",
            },
        )
    return {
        "latent_file": latent["latent_file_path"],
        "positive_encoding_file": enc["positive_encoding_file"],
        "negative_encoding_file": enc["negative_encoding_file"],
    }


@pytest.mark.slow  # the spec's 1.0 megapixels: a full-size VAE encode on the CPU
def test_latent_encode_spec_example(server: LiveServer, client: httpx.Client) -> None:
    out = server.data / "outputs" / "latents"
    body = {
        **examples.REQUESTS["latent_encoder"],
        "image_path": str(server.data / "inputs/person.png"),
        "output_dir": str(out),
    }
    assert body["vae_model_name"] == "qwen_image_vae.safetensors" and body["megapixels"] == 1.0
    data = post(client, "/api/v1/latent/encode", body)
    path = Path(data["latent_file_path"])
    assert path.parent == out and path.is_file() and path.suffix == ".pt"
    latent = torch.load(path, weights_only=True)["latent"]
    assert data["latent_shape"] == list(latent.shape)
    batch, channels, frames, height, width = data["latent_shape"]
    assert (batch, channels, frames) == (1, 16, 1)
    assert abs(height * 8 * width * 8 / 1e6 - 1.0) < 0.1  # about one megapixel, as asked
    assert data["metadata"]["vae_model_name"] == "qwen_image_vae.safetensors"


def test_text_encode_spec_example(server: LiveServer, client: httpx.Client) -> None:
    inputs = server.data / "inputs"
    body = {
        **examples.REQUESTS["text_encoder"],
        "image1_path": str(inputs / "person.png"),
        "image2_path": str(inputs / "cloth.png"),
    }
    data = post(client, "/api/v1/text/encode", body)
    for side in ("positive", "negative"):
        saved = torch.load(data[f"{side}_encoding_file"], weights_only=True)
        assert list(saved["prompt_embeds"].shape) == data[f"{side}_shape"]
        assert len(data[f"{side}_shape"]) == 3 and data[f"{side}_shape"][0] == 1


def test_sampling_spec_example(client: httpx.Client, chain: dict[str, str]) -> None:
    body = {**examples.REQUESTS["sampling"], **chain}
    data = post(client, "/api/v1/sampling/sample", body)
    latent = torch.load(data["sampled_latent_file"], weights_only=True)["latent"]
    assert data["sampled_latent_shape"] == list(latent.shape)
    source = torch.load(chain["latent_file"], weights_only=True)["latent"]
    assert latent.shape == source.shape
    meta = data["sampling_metadata"]
    assert meta["seed"] == 12345 and meta["steps"] == 4 and meta["sampler_name"] == "euler"
    assert meta["lora_model_name"] == "Qwen-Image-Lightning-4steps-V2.0.safetensors"
    assert meta["shift"] == 3 and meta["cfg_norm_strength"] == 1.0 and meta["scheduler"] == "simple"


def test_decode_spec_example(server: LiveServer, client: httpx.Client, chain: dict[str, str]) -> None:
    out = server.data / "outputs" / "images"
    body = {**examples.REQUESTS["decoding"], "latent_file": chain["latent_file"], "output_dir": str(out)}
    data = post(client, "/api/v1/decoding/decode", body, **{"X-Request-ID": "spec-decode-1"})
    path = Path(data["image_file_path"])
    assert data["request_id"] == "spec-decode-1"
    assert path == out / "test_male_1_spec-decode-1.jpg"
    assert data["file_size"] == path.stat().st_size
    with Image.open(path) as image:
        assert image.format == "JPEG"
        assert data["image_shape"] == [image.height, image.width, 3]


def test_edit_one_piece_with_model_names_left_out(server: LiveServer, client: httpx.Client) -> None:
    inputs = server.data / "inputs"
    body = {
        "image1_path": str(inputs / "person.png"),
        "image2_path": str(inputs / "cloth.png"),
        "prompt": "put the cloth on the person",
        "sampling_params": {"seed": 7, "steps": 2},
        "output_format": "png",
    }
    data = post(client, "/api/v1/edit", body)
    with Image.open(data["image_file_path"]) as image:
        assert image.format == "PNG" and data["image_shape"] == [image.height, image.width, 3]
    again = post(client, "/api/v1/edit", body)  # same seed, same image
    with Image.open(data["image_file_path"]) as a, Image.open(again["image_file_path"]) as b:
        assert a.tobytes() == b.tobytes()
    assert again["request_id"] != data["request_id"]


def test_relative_paths_resolve_inside_the_roots(client: httpx.Client) -> None:
    data = post(client, "/api/v1/latent/encode", {"image_path": "inputs/cloth.png", "megapixels": 0.02})
    assert Path(data["latent_file_path"]).is_file()
