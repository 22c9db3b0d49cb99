"""Conditioning and latent-editing node types: ReferenceLatent and ConditioningZeroOut return new
conditionings, TextEncodeQwenImageEdit encodes one image as the vision input and the reference
latent, and LatentCut / LatentCutToBatch slice the latent as ComfyUI's do."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from genserve.workflows.demo import CLIP, UNET, VAE
from genserve.workflows.nodes.values import image_to_tensor
from tests.unit.workflows.nodes.conftest import NodeCall


def picture(width: int = 96, height: int = 64) -> torch.Tensor:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return image_to_tensor([Image.fromarray(pixels, "RGB")])


def test_reference_latent_appends_without_touching_the_input(run_node: NodeCall) -> None:
    [clip] = run_node("CLIPLoader", clip_name=CLIP, type="qwen_image")
    [conditioning] = run_node("CLIPTextEncode", text="a hat", clip=clip)
    first = {"samples": torch.ones(1, 16, 1, 4, 6)}
    second = {"samples": torch.zeros(1, 16, 1, 8, 8)}
    [one] = run_node("ReferenceLatent", conditioning=conditioning, latent=first)
    [two] = run_node("ReferenceLatent", conditioning=one, latent=second)
    assert conditioning.reference_latents == []
    assert [r.shape for r in two.reference_latents] == [(1, 16, 1, 4, 6), (1, 16, 1, 8, 8)]
    [same] = run_node("ReferenceLatent", conditioning=conditioning)
    assert same is conditioning
    [zeroed] = run_node("ConditioningZeroOut", conditioning=two)
    assert not zeroed.prompt_embeds.any() and conditioning.prompt_embeds.any()
    assert zeroed.prompt_embeds.shape == two.prompt_embeds.shape
    assert len(zeroed.reference_latents) == 2  # ComfyUI zeroes the embeddings only


def test_qwen_image_edit_encodes_the_image_and_samples_with_it(run_node: NodeCall) -> None:
    [clip] = run_node("CLIPLoader", clip_name=CLIP, type="qwen_image")
    [vae] = run_node("VAELoader", vae_name=VAE)
    [with_image] = run_node(
        "TextEncodeQwenImageEdit", clip=clip, prompt="make it blue", vae=vae, image=picture()
    )
    [text_only] = run_node("TextEncodeQwenImageEdit", clip=clip, prompt="make it blue")
    [reference] = with_image.reference_latents
    width, height = with_image.metadata["reference_sizes"][0]
    assert width % 16 == 0 and height % 16 == 0 and width > height  # the 3:2 picture, resized
    assert reference.shape == (1, 16, 1, height // 8, width // 8)
    assert text_only.reference_latents == []
    assert with_image.prompt_embeds.shape[1] > text_only.prompt_embeds.shape[1]  # the vision tokens
    [model] = run_node("UNETLoader", unet_name=UNET, weight_dtype="default")
    [latent] = run_node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    [sampled] = run_node(
        "KSampler",
        model=model,
        seed=1,
        steps=2,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        positive=with_image,
        negative=with_image,
        latent_image=latent,
        denoise=1.0,
    )
    assert sampled["samples"].shape == (1, 16, 1, 8, 8) and torch.isfinite(sampled["samples"]).all()


def test_latent_cut_narrows_one_axis_as_comfyui(run_pure: NodeCall) -> None:
    latent = {"samples": torch.arange(2 * 16 * 1 * 4 * 6, dtype=torch.float32).view(2, 16, 1, 4, 6)}
    [cut] = run_pure("LatentCut", samples=latent, dim="x", index=2, amount=3)
    assert torch.equal(cut["samples"], latent["samples"][..., 2:5])
    [tail] = run_pure("LatentCut", samples=latent, dim="y", index=-1, amount=5)
    assert torch.equal(tail["samples"], latent["samples"][..., 3:4, :])
    [frames] = run_pure("LatentCut", samples=latent, dim="t", index=1, amount=16384)
    assert frames["samples"].shape == (2, 16, 1, 4, 6)  # index clamped to the one frame


def test_latent_cut_to_batch_tiles_slices_into_the_batch(run_pure: NodeCall) -> None:
    latent = {"samples": torch.randn(1, 16, 1, 4, 6)}
    [same] = run_pure("LatentCutToBatch", samples=latent, dim="t", slice_size=1)
    assert torch.equal(same["samples"], latent["samples"])
    [tiles] = run_pure("LatentCutToBatch", samples=latent, dim="x", slice_size=2)
    assert tiles["samples"].shape == (3, 16, 1, 4, 2)
    assert torch.equal(tiles["samples"][1], latent["samples"][0, ..., 2:4])
    [trimmed] = run_pure("LatentCutToBatch", samples=latent, dim="x", slice_size=4)
    assert trimmed["samples"].shape == (1, 16, 1, 4, 4)  # the leftover columns are dropped
