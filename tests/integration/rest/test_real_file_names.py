"""The pipeline spec's example, end to end over HTTP, on the four files the spec names, each in the
layout ComfyUI users hold it: the fp8 transformer, the scaled-fp8 text encoder (old key layout,
tokenizer in its sidecar folder), the Wan-layout VAE and the Lightning-layout LoRA, tiny and so
named. Every model name in the requests is the spec's, unchanged."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from genserve.models.demo.lora_files import write_lora_layouts
from genserve.models.demo.pipeline import DEMO_LORA, DEMO_TEXT_ENCODER, DEMO_TRANSFORMER, DEMO_VAE
from genserve.models.demo.single_files import (
    comfy_text_encoder,
    folder_weights,
    plain_fp8,
    scale_weight,
    write,
)
from genserve.models.formats import wan_vae
from genserve.models.formats.tokenizer_files import sidecar_folder
from genserve.services.pipeline import examples
from tests.conftest import SMALL_MP, small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root

pytestmark = pytest.mark.slow  # a server of its own on four freshly written files

TRANSFORMER = "qwen_image_edit_2509_fp8_e4m3fn.safetensors"
TEXT_ENCODER = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
VAE = "qwen_image_vae.safetensors"
LORA = "Qwen-Image-Lightning-4steps-V2.0.safetensors"


def spec_named_models(demo: Path, root: Path) -> Path:
    write(
        root / "diffusion_models" / TRANSFORMER,
        plain_fp8(folder_weights(demo / "diffusion_models" / DEMO_TRANSFORMER)),
    )
    encoder = demo / "text_encoders" / DEMO_TEXT_ENCODER
    file = write(
        root / "text_encoders" / TEXT_ENCODER, scale_weight(comfy_text_encoder(folder_weights(encoder)))
    )
    sidecar_folder(file).mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(encoder / name, sidecar_folder(file) / name)
    write(root / "vae" / VAE, wan_vae.from_diffusers(folder_weights(demo / "vae" / DEMO_VAE)))
    lightning = write_lora_layouts(root / "work", demo / "loras" / DEMO_LORA)[0]
    (root / "loras").mkdir()
    shutil.move(lightning, root / "loras" / LORA)
    shutil.rmtree(root / "work")
    return root


@pytest.fixture(scope="module")
def served(
    demo_models: Path, tmp_path_factory: pytest.TempPathFactory, demo_images: Path
) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("spec-files")
    models = spec_named_models(demo_models, base / "models")
    data = make_data_root(base / "data", demo_images)
    with live_server(small_settings(models, data), data) as live:
        yield live


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_spec_example_runs_on_the_files_the_spec_names(served: LiveServer) -> None:
    inputs, out = served.data / "inputs", served.data / "outputs"
    with served.client() as client:
        latent = post(client, "/api/v1/latent/encode", {
            **examples.REQUESTS["latent_encoder"], "image_path": str(inputs / "person.png"),
            "output_dir": str(out), "megapixels": SMALL_MP,
        })  # fmt: skip
        encoded = post(client, "/api/v1/text/encode", {
            **examples.REQUESTS["text_encoder"], "image1_path": str(inputs / "person.png"),
            "image2_path": str(inputs / "cloth.png"),
        })  # fmt: skip
        sampled = post(client, "/api/v1/sampling/sample", {
            **examples.REQUESTS["sampling"], "latent_file": latent["latent_file_path"],
            "positive_encoding_file": encoded["positive_encoding_file"],
            "negative_encoding_file": encoded["negative_encoding_file"],
        })  # fmt: skip
        image = post(client, "/api/v1/decoding/decode", {
            **examples.REQUESTS["decoding"], "latent_file": sampled["sampled_latent_file"],
            "output_dir": str(out),
        })  # fmt: skip
        rows = {(m["kind"], m["name"]): m for m in client.get("/api/v1/models").json()["models"]}
    assert Path(image["image_file_path"]).is_file() and image["file_size"] > 0
    assert sampled["sampling_metadata"]["lora_model_name"] == LORA
    formats = {
        ("diffusion_models", TRANSFORMER): "ComfyUI single file (bare keys, fp8 e4m3fn)",
        ("text_encoders", TEXT_ENCODER): "ComfyUI single file (Qwen2.5-VL, fp8 scaled)",
        ("vae", VAE): "Wan-2.1 single file",
        ("loras", LORA): "Lightning LoRA",
    }
    for key, detected in formats.items():
        assert rows[key]["format"] == detected and rows[key]["loaded"], (key, rows[key])
