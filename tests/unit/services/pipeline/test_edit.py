"""The split pipeline (four services, with their files) against ``edit`` (one call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from genserve.services.pipeline import examples
from tests.unit.services.conftest import LORA


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize(
    "params",
    [
        examples.REQUESTS["sampling"]["sampling_params"],
        {
            "seed": 99,
            "steps": 3,
            "cfg": 3.5,
            "sampler_name": "dpmpp_2m",
            "scheduler": "karras",
            "denoise": 0.8,
        },
    ],
)
def test_split_pipeline_equals_edit_exactly(run, data_root: Path, params: dict[str, Any]) -> None:
    """Max abs pixel difference is 0: files are saved losslessly (torch.save, PNG) and both paths
    run the same functions on the same models, so not even float noise separates them."""
    images = {"image1_path": "inputs/person.png", "image2_path": "inputs/cloth.png"}
    prompts = {"prompt": "put the red shirt on the person", "negative_prompt": "blurry, low quality"}
    models = {"lora_model_name": LORA, "lora_strength": 0.8}
    transform = {"shift": 2.5, "strength": 0.9}

    latent = run("latent_encoder", {"image_path": images["image1_path"]})
    encodings = run("text_encoder", {**images, **prompts})
    sampled = run(
        "sampling",
        {
            "positive_encoding_file": encodings.positive_encoding_file,
            "negative_encoding_file": encodings.negative_encoding_file,
            "latent_file": latent.latent_file_path,
            "sampling_params": params,
            "model_transform_params": transform,
            **models,
        },
    )
    split = run("decoding", {"latent_file": sampled.sampled_latent_file, "output_format": "png"})
    whole = run(
        "edit",
        {
            **images,
            **prompts,
            **models,
            "sampling_params": params,
            "model_transform_params": transform,
            "output_format": "png",
        },
    )
    assert whole.image_shape == split.image_shape
    assert int(np.abs(_pixels(whole.image_file_path) - _pixels(split.image_file_path)).max()) == 0
    assert whole.metadata["sampling"]["steps"] == params["steps"]
    reseeded = {**params, "seed": params["seed"] + 1}
    other = run("edit", {**images, **prompts, "sampling_params": reseeded, "output_format": "png"})
    assert int(np.abs(_pixels(other.image_file_path) - _pixels(split.image_file_path)).max()) > 0
