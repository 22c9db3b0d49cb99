"""Image node types beyond the demo workflows: FluxKontextImageScale picks ComfyUI's Kontext size,
and LoadImage offers the upload button (``image_upload``) in ComfyUI's object_info."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genserve.app.runtime import Runtime
from genserve.models.demo.pipeline import DEMO_TEXT_ENCODER, DEMO_TRANSFORMER, DEMO_VAE
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.nodes.image import KONTEXT_SIZES
from genserve.workflows.runner import WorkflowRunner
from tests.unit.workflows.nodes.conftest import NodeCall


def test_flux_kontext_image_scale_takes_the_nearest_aspect(runtime: Runtime, data_root: Path) -> None:
    runner = WorkflowRunner(pipeline_registry(runtime.models.registry, data_root / "inputs"))
    resources = PipelineResources.from_runtime(runtime, input_dir=data_root / "inputs")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
        "2": {"class_type": "FluxKontextImageScale", "inputs": {"image": ["1", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    result = runner.run(prompt, resources=resources)
    with Image.open(data_root / "inputs/person.png") as person:
        ratio = person.width / person.height
    scaled = result.values["2"][0]
    height, width = scaled.shape[1:3]
    assert (width, height) in KONTEXT_SIZES
    assert all(abs(width / height - ratio) <= abs(w / h - ratio) for w, h in KONTEXT_SIZES)
    assert float(scaled.min()) >= 0 and float(scaled.max()) <= 1 and np.ptp(scaled.numpy()) > 0


def test_load_image_object_info_has_the_upload_option(runtime: Runtime, data_root: Path) -> None:
    info = pipeline_registry(runtime.models.registry, data_root / "inputs").object_info("LoadImage")
    choices, options = info["LoadImage"]["input"]["required"]["image"]
    assert "person.png" in choices and options["image_upload"] is True


def test_vae_encode_crops_to_8_pixels_and_odd_references_sample(run_node: NodeCall) -> None:
    """As ComfyUI: VAEEncode crops from the centre to multiples of 8 pixels, so latent sides may be
    odd; an edit model's reference latent with odd sides is padded to the 2x2 patches."""
    vae = run_node("VAELoader", vae_name=DEMO_VAE)[0]
    image = torch.rand(1, 43, 75, 3)
    latent = run_node("VAEEncode", pixels=image, vae=vae)[0]
    assert latent["samples"].shape == (1, 16, 1, 5, 9)
    clip = run_node("CLIPLoader", clip_name=DEMO_TEXT_ENCODER, type="qwen_image")[0]
    text = run_node("CLIPTextEncode", text="a red apple", clip=clip)[0]
    with_reference = run_node("ReferenceLatent", conditioning=text, latent=latent)[0]
    model = run_node("UNETLoader", unet_name=DEMO_TRANSFORMER, weight_dtype="default")[0]
    common = {"seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}
    sampled = run_node(
        "KSampler", model=model, positive=with_reference, negative=text, latent_image=latent, **common
    )[0]["samples"]
    plain = run_node("KSampler", model=model, positive=text, negative=text, latent_image=latent, **common)[0]
    assert sampled.shape == (1, 16, 1, 5, 9) and (sampled - plain["samples"]).abs().max() > 1e-4
