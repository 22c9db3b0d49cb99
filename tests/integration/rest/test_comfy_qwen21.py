"""Qwen-Image 2.1 through ComfyUI's own listener on a real server: an edit as the official template
chains it (an uploaded image, TextEncodeQwenImage21 with the VAE, the int8 ConvRot model behind
QwenImage21Cache, KSampler, VAEDecode, SaveImage) runs to an RGBA PNG carrying its prompt."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from genserve.models.demo.qwen21 import (
    QWEN21_TEXT_ENCODER,
    QWEN21_TRANSFORMER_INT8,
    QWEN21_VAE,
    build_qwen21_set,
)
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root, wait_for


@pytest.fixture(scope="module")
def server(
    demo_models: Path, demo_images: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("qwen21")
    models = root / "models"
    for kind in ("diffusion_models", "text_encoders", "vae"):
        (models / kind).mkdir(parents=True)
        for entry in (demo_models / kind).iterdir():
            (models / kind / entry.name).symlink_to(entry)
    build_qwen21_set(models)
    data = make_data_root(root / "data", demo_images)
    with live_server(small_settings(models, data), data, comfy=True) as live:
        yield live


@pytest.fixture
def comfy(server: LiveServer) -> Iterator[httpx.Client]:
    with server.comfy_client() as client:
        yield client


def _edit_prompt(image: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": QWEN21_TEXT_ENCODER, "type": "qwen_image"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": QWEN21_VAE}},
        "4": {
            "class_type": "TextEncodeQwenImage21",
            "inputs": {
                "clip": ["2", 0],
                "prompt": "Remove the background",
                "negative_prompt": "",
                "vae": ["3", 0],
                "resolution": 0,
                "images.image_1": ["1", 0],
            },
        },
        "5": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": QWEN21_TRANSFORMER_INT8, "weight_dtype": "default"},
        },
        "6": {
            "class_type": "QwenImage21Cache",
            "inputs": {"model": ["5", 0], "device": "auto", "dtype": "int8"},
        },
        "7": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["6", 0],
                "positive": ["4", 0],
                "negative": ["4", 1],
                "latent_image": ["4", 2],
                "seed": 5,
                "control_after_generate": "fixed",
                "steps": 2,
                "cfg": 2.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "qwen21"}},
    }


def test_an_edit_runs_to_an_rgba_png_with_its_prompt(comfy: httpx.Client) -> None:
    picture = io.BytesIO()
    Image.new("RGBA", (96, 64), (200, 40, 40, 180)).save(picture, "PNG")
    upload = comfy.post("/upload/image", files={"image": ("edit.png", picture.getvalue(), "image/png")})
    assert upload.status_code == 200, upload.text
    prompt = _edit_prompt(upload.json()["name"])
    answer = comfy.post("/prompt", json={"prompt": prompt, "client_id": "qwen21"})
    assert answer.status_code == 200, answer.text
    prompt_id = answer.json()["prompt_id"]

    def finished() -> bool:
        entry = comfy.get(f"/history/{prompt_id}").json().get(prompt_id)
        return bool(entry) and entry["status"]["completed"] is not None

    wait_for(finished, 180, "the 2.1 edit to finish")
    entry = comfy.get(f"/history/{prompt_id}").json()[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    [saved] = entry["outputs"]["9"]["images"]
    png = comfy.get("/view", params=saved)
    assert png.status_code == 200
    image = Image.open(io.BytesIO(png.content))
    assert image.mode == "RGBA" and image.size == (96, 64)  # the reference's own size (resolution 0)
    assert json.loads(image.text["prompt"])["4"]["class_type"] == "TextEncodeQwenImage21"


def test_object_info_declares_the_2_1_nodes_inputs_and_outputs(comfy: httpx.Client) -> None:
    info = comfy.get("/object_info/TextEncodeQwenImage21").json()["TextEncodeQwenImage21"]
    assert info["output"] == ["CONDITIONING", "CONDITIONING", "LATENT"]
    assert info["output_name"] == ["positive", "negative", "latent"]
    assert info["input"]["optional"]["resolution"][1]["step"] == 32
    assert "images.image_16" in info["input"]["optional"]
    cache = comfy.get("/object_info/QwenImage21Cache").json()["QwenImage21Cache"]
    assert cache["input"]["required"]["device"][0] == ["auto", "gpu", "cpu", "off"]
    assert cache["input"]["required"]["dtype"][0] == ["default", "int8", "int4"]
    assert cache["experimental"] is True and "experimental" not in info
