"""genserve's ``edit`` against diffusers' own QwenImageEditPlusPipeline on the same loaded models.

Both run the demo models with the same seed, output size and reference sizes (euler, simple
schedule with shift 3, cfg 1, 4 steps, no LoRA), so the two images must agree up to float
rounding. The models are pinned to float32 on CPU so the bound below holds on any machine.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from genserve.app.runtime import Runtime
from tests.unit.services.conftest import diffusers_components

PROMPT = "by using the green masked area, put the cloth on the person"
SEED = 0
STEPS = 4
# Measured (diffusers 0.42.1, torch 2.13 CPU, fp32): the sampled latents agree to 1 float32 ulp
# (<= 4.8e-7 at |x| ~ 5) and the decoded images, before 8-bit rounding, to <= 4e-4 of a level.
# genserve's Euler works in x0 space (x0 = x - sigma * v, then (x - x0) / sigma) where diffusers
# steps x + dt * v directly: the same math with different float rounding. A value lying within
# 4e-4 of a .5 boundary then rounds the other way: max diff 1 on 1 of 48,384 values for seeds 0,
# 7 and 12345, 0 for seed 1 (prompt embeddings and the initial noise are bit-identical).
MAX_PIXEL_DIFF = 2
MAX_DIFFERING_FRACTION = 0.001
# Seeds s and s + 1 give images ~23.5 levels apart on average (max ~125) with these models.
MIN_SEED_MEAN_DIFF = 5.0


def _area(megapixels: float) -> int:
    return round(megapixels * 1_000_000)


def genserve_edit(rt: Runtime, inputs: Path, seed: int) -> tuple[np.ndarray, Any]:
    response = rt.engine.run_sync(
        "edit",
        {
            "image1_path": str(inputs / "person.png"),
            "image2_path": str(inputs / "cloth.png"),
            "prompt": PROMPT,
            "lora_model_name": "",
            "output_format": "png",
            "sampling_params": {
                "seed": seed,
                "steps": STEPS,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
            },
        },
    )
    with Image.open(response.image_file_path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return pixels, response


def diffusers_edit(rt: Runtime, inputs: Path, seed: int, width: int, height: int) -> np.ndarray:
    from diffusers import QwenImageEditPlusPipeline

    images = [Image.open(inputs / name).convert("RGB") for name in ("person.png", "cloth.png")]
    with ExitStack() as stack:
        pipe = QwenImageEditPlusPipeline(**diffusers_components(rt, stack, with_processor=True))
        pipe.set_progress_bar_config(disable=True)
        out = pipe(
            image=images,
            prompt=PROMPT,
            true_cfg_scale=1.0,
            height=height,
            width=width,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images[0]
    return (out * 255).round().astype(np.int16)  # as diffusers' numpy_to_pil rounds


def test_edit_matches_diffusers_pipeline(
    cpu_runtime: Runtime, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus

    defaults = cpu_runtime.settings.pipeline
    # diffusers fixes the reference areas as module constants; match them to genserve's settings.
    monkeypatch.setattr(edit_plus, "VAE_IMAGE_SIZE", _area(defaults.vae_reference_megapixels))
    monkeypatch.setattr(edit_plus, "CONDITION_IMAGE_SIZE", _area(defaults.vision_reference_megapixels))
    inputs = data_root / "inputs"

    ours, response = genserve_edit(cpu_runtime, inputs, SEED)
    width, height = response.metadata["latent"]["scaled_size"]
    theirs = diffusers_edit(cpu_runtime, inputs, SEED, width, height)

    assert ours.shape == theirs.shape == (height, width, 3)
    diff = np.abs(ours - theirs)
    assert int(diff.max()) <= MAX_PIXEL_DIFF, f"max pixel diff {int(diff.max())}"
    assert float((diff > 0).mean()) <= MAX_DIFFERING_FRACTION, f"{int((diff > 0).sum())} values differ"

    other, _ = genserve_edit(cpu_runtime, inputs, SEED + 1)
    assert float(np.abs(other - ours).mean()) > MIN_SEED_MEAN_DIFF
