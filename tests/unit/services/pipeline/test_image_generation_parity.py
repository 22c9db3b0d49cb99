"""genserve's ``image_generation`` against diffusers' own QwenImagePipeline on the same loaded models.

Both run the demo models in float32 on CPU with the same seed and size (euler, simple schedule
with shift 3 = diffusers' FlowMatchEulerDiscreteScheduler(shift=3) without dynamic shifting,
cfg 1, 4 steps, no LoRA). At cfg != 1 the two differ by design: genserve applies ComfyUI's
CFGNorm to the guided x0, diffusers rescales the guided velocity.
"""

from __future__ import annotations

import io
from contextlib import ExitStack

import numpy as np
import pytest
import torch
from PIL import Image

from genserve.app.runtime import Runtime
from genserve.services.base import RunContext
from genserve.services.pipeline.text_prompt import encode_text_prompts
from tests.unit.services.conftest import diffusers_components

PROMPT = "a red apple on a wooden table"
STEPS = 4
# Measured (diffusers 0.42.1, torch CPU, fp32): seeds 7 and 12345 give identical images, seed 0
# differs by 1 level on 1 of 24,576 values (float rounding of genserve's x0-space Euler step
# against diffusers' velocity step, as in the edit parity test).
MAX_PIXEL_DIFF = 2
MAX_DIFFERING_FRACTION = 0.001


def genserve_image(rt: Runtime, seed: int, width: int, height: int) -> np.ndarray:
    response = rt.engine.run_sync(
        "image_generation",
        {
            "prompt": PROMPT,
            "width": width,
            "height": height,
            "steps": STEPS,
            "seed": seed,
            "cfg_scale": 1.0,
            "sampler": "euler",
            "scheduler": "simple",
            "shift": 3.0,
            "lora_model_name": "",
        },
    )
    with Image.open(io.BytesIO(response.images[0])) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def diffusers_pipeline(rt: Runtime, stack: ExitStack):  # -> QwenImagePipeline
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline(**diffusers_components(rt, stack))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_prompt_embeddings_match_diffusers(cpu_runtime: Runtime) -> None:
    ctx = RunContext(cpu_runtime.models, cpu_runtime.sandbox, cpu_runtime.settings.pipeline)
    clip = cpu_runtime.settings.pipeline.clip_model_name
    positive, negative, _ = encode_text_prompts(PROMPT, "", clip, ctx)
    with ExitStack() as stack:
        pipe = diffusers_pipeline(cpu_runtime, stack)
        embeds, mask = pipe.encode_prompt(PROMPT, device=torch.device("cpu"))
        empty, _ = pipe.encode_prompt("", device=torch.device("cpu"))
    assert torch.equal(positive.prompt_embeds, embeds.float())
    assert bool(positive.prompt_mask.all()) and (mask is None or bool(mask.all()))  # one prompt: no padding
    assert negative is not None and torch.equal(negative.prompt_embeds, empty.float())


@pytest.mark.parametrize(("seed", "width", "height"), [(0, 128, 64), (7, 64, 128), (12345, 128, 128)])
def test_image_generation_matches_diffusers_pipeline(
    cpu_runtime: Runtime, seed: int, width: int, height: int
) -> None:
    ours = genserve_image(cpu_runtime, seed, width, height)
    with ExitStack() as stack:
        pipe = diffusers_pipeline(cpu_runtime, stack)
        out = pipe(
            prompt=PROMPT,
            true_cfg_scale=1.0,
            height=height,
            width=width,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images[0]
    theirs = (out * 255).round().astype(np.int16)  # as diffusers' numpy_to_pil rounds
    assert ours.shape == theirs.shape == (height, width, 3)
    diff = np.abs(ours - theirs)
    assert int(diff.max()) <= MAX_PIXEL_DIFF, f"max pixel diff {int(diff.max())}"
    assert float((diff > 0).mean()) <= MAX_DIFFERING_FRACTION, f"{int((diff > 0).sum())} values differ"
