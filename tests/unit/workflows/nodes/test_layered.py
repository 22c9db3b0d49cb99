"""Qwen-Image-Layered on the demo files: the official template's chain (VAEEncode the image with
the RGBA VAE, ReferenceLatent, an empty layered latent, KSampler, LatentCut and LatentCutToBatch on
``t``, VAEDecode, SaveImage) gives one RGBA PNG per layer; the sampler calls the transformer as
diffusers' layered pipeline does; layered latents are refused where they cannot go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import QwenImageLayeredPipeline
from PIL import Image

from genserve.config import Settings
from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.layered import (
    LAYERED_TRANSFORMER,
    LAYERED_VAE,
    build_layered_transformer,
    build_layered_vae,
)
from genserve.models.demo.pipeline import DEMO_TEXT_ENCODER, DEMO_TRANSFORMER, DEMO_VAE
from genserve.services.pipeline.denoiser import Denoiser
from genserve.services.pipeline.imaging import pack
from genserve.workflows.nodes.builtin import PipelineResources
from tests.conftest import small_settings
from tests.unit.workflows.nodes.conftest import NodeCall


@pytest.fixture(scope="module")
def layered_models(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pipeline models plus Qwen-Image-Layered's pair (``models demo --formats`` writes
    them; the plain demo set leaves them out)."""
    models = tmp_path_factory.mktemp("layered") / "models"
    for kind in ("diffusion_models", "text_encoders", "vae"):
        (models / kind).mkdir(parents=True)
        for entry in (demo_models / kind).iterdir():
            (models / kind / entry.name).symlink_to(entry)
    build_layered_transformer(
        models / "diffusion_models" / LAYERED_TRANSFORMER, models / "diffusion_models" / DEMO_TRANSFORMER, 0
    )
    build_layered_vae(models / "vae" / LAYERED_VAE, models / "vae" / DEMO_VAE, 0)
    return models


@pytest.fixture
def settings(layered_models: Path, data_root: Path) -> Settings:
    return small_settings(layered_models, data_root)


@pytest.fixture
def layered(run_node: NodeCall) -> dict[str, Any]:
    clip = run_node("CLIPLoader", clip_name=DEMO_TEXT_ENCODER, type="qwen_image")[0]
    vae = run_node("VAELoader", vae_name=LAYERED_VAE)[0]
    image, _ = run_node("LoadImage", image="person.png")
    image = run_node("ImageScaleToMaxDimension", image=image, upscale_method="lanczos", largest_size=64)[0]
    reference = run_node("VAEEncode", pixels=image, vae=vae)[0]
    text = run_node("CLIPTextEncode", text="", clip=clip)[0]
    conditioning = run_node("ReferenceLatent", conditioning=text, latent=reference)[0]
    width, height, _ = run_node("GetImageSize", image=image)
    model = run_node("UNETLoader", unet_name=LAYERED_TRANSFORMER, weight_dtype="default")[0]
    return {
        "vae": vae,
        "conditioning": conditioning,
        "model": run_node("ModelSamplingAuraFlow", model=model, shift=1.0)[0],
        "size": (width, height),
    }


def _sample(run_node: NodeCall, parts: dict[str, Any], latent: dict[str, Any], **model: Any) -> Any:
    common = {"seed": 4, "steps": 2, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple"}
    inputs = {"model": parts["model"], "positive": parts["conditioning"], "negative": parts["conditioning"]}
    return run_node("KSampler", **{**inputs, **model}, latent_image=latent, **common)[0]


def test_the_layered_template_writes_one_rgba_png_per_layer(
    run_node: NodeCall, layered: dict[str, Any], node_resources: PipelineResources
) -> None:
    width, height = layered["size"]
    latent = run_node("EmptyQwenImageLayeredLatentImage", width=width, height=height, layers=2, batch_size=1)[
        0
    ]
    assert latent["samples"].shape == (1, 16, 3, height // 8, width // 8)
    sampled = _sample(run_node, layered, latent)
    assert sampled["samples"].shape == latent["samples"].shape and sampled["samples"].abs().sum() > 0
    layers = run_node("LatentCut", samples=sampled, dim="t", index=1, amount=16384)[0]
    batch = run_node("LatentCutToBatch", samples=layers, dim="t", slice_size=1)[0]
    assert batch["samples"].shape == (2, 16, 1, height // 8, width // 8)
    images = run_node("VAEDecode", samples=batch, vae=layered["vae"])[0]
    assert images.shape == (2, height, width, 4)
    saved = run_node("SaveImage", images=images, filename_prefix="layers")
    assert saved == ()  # an output node: its files are in the ui result, checked below
    files = sorted(Path(node_resources.output_root()).glob("layers_*.png"))
    assert len(files) == 2 and all(Image.open(f).mode == "RGBA" for f in files)
    with pytest.raises(GenserveError) as info:
        run_node("VAEDecode", samples=sampled, vae=layered["vae"])
    assert info.value.details["field"] == "samples" and "LatentCutToBatch" in info.value.message


def test_a_layered_latent_needs_the_layered_model(run_node: NodeCall, layered: dict[str, Any]) -> None:
    latent = run_node("EmptyQwenImageLayeredLatentImage", width=48, height=64, layers=1, batch_size=1)[0]
    plain = run_node("UNETLoader", unet_name=DEMO_TRANSFORMER, weight_dtype="default")[0]
    with pytest.raises(GenserveError) as info:
        _sample(run_node, layered, latent, model=plain)
    assert info.value.code is ErrorCode.INVALID_INPUT and "Qwen-Image-Layered" in info.value.message
    with pytest.raises(GenserveError) as info:
        run_node("ReferenceLatent", conditioning=layered["conditioning"], latent=latent)
    assert info.value.details["field"] == "latent"


def test_the_transformer_sees_diffusers_layered_layout(
    run_node: NodeCall, layered: dict[str, Any], node_resources: PipelineResources
) -> None:
    """One model call of the sampler against the transformer called as the layered pipeline
    calls it (its own packing, ``img_shapes`` and ``additional_t_cond``)."""
    encoding = layered["conditioning"]
    [reference] = encoding.reference_latents
    latent = torch.randn(1, 16, 3, 8, 6, generator=torch.Generator().manual_seed(2))
    settings = {"cfg": 1.0, "cfg_norm_strength": 1.0}
    with node_resources.models.use("diffusion_models", LAYERED_TRANSFORMER) as model:
        denoiser = Denoiser(model, [encoding], [reference], latent.shape, settings, None)  # type: ignore[arg-type]
        ours = denoiser.velocity(pack(latent), 0.6, *denoiser.prepared[0], 0)
        layers = QwenImageLayeredPipeline._pack_latents(latent.permute(0, 2, 1, 3, 4), 1, 16, 8, 6, 3)
        image = QwenImageLayeredPipeline._pack_latents(reference.permute(0, 2, 1, 3, 4), 1, 16, 8, 6, 1)
        theirs = model.transformer(
            hidden_states=torch.cat([layers, image], dim=1),
            timestep=torch.tensor([0.6]),
            encoder_hidden_states=encoding.prompt_embeds,
            encoder_hidden_states_mask=encoding.prompt_mask,
            img_shapes=[[(1, 4, 3)] * 3 + [(1, 4, 3)]],
            additional_t_cond=torch.zeros(1, dtype=torch.long),
            return_dict=False,
        )[0][:, : layers.shape[1]]
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
