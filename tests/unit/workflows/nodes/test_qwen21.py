"""Qwen-Image 2.1 on the demo files, through its nodes as the official templates chain them:
CLIPLoader (Qwen3-VL) -> TextEncodeQwenImage21 (prompt, negative, VAE, reference images) ->
UNETLoader (int8 ConvRot) -> QwenImage21Cache -> KSampler -> VAEDecode (RGBA)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from genserve.config import Settings
from genserve.errors import GenserveError
from genserve.models.demo.pipeline import DEMO_LORA, DEMO_TRANSFORMER
from genserve.models.demo.qwen21 import (
    QWEN21_TEXT_ENCODER,
    QWEN21_TRANSFORMER,
    QWEN21_TRANSFORMER_INT8,
    QWEN21_VAE,
    build_qwen21_set,
)
from genserve.services.pipeline.qwen21_denoiser import SLOTS_KEY
from genserve.workflows.nodes.custom_sampling import model_settings
from genserve.workflows.nodes.qwen21 import reference_size
from genserve.workflows.nodes.values import QWEN21
from tests.conftest import small_settings
from tests.unit.workflows.nodes.conftest import NodeCall

SAMPLE = {"seed": 3, "steps": 2, "sampler_name": "euler", "scheduler": "simple"}


@pytest.fixture(scope="module")
def qwen21_models(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models plus Qwen-Image 2.1's three files (``models demo --formats`` writes them)."""
    models = tmp_path_factory.mktemp("qwen21") / "models"
    for kind in ("diffusion_models", "text_encoders", "vae", "loras"):
        (models / kind).mkdir(parents=True)
        for entry in (demo_models / kind).iterdir():
            (models / kind / entry.name).symlink_to(entry)
    build_qwen21_set(models)
    return models


@pytest.fixture
def settings(qwen21_models: Path, data_root: Path) -> Settings:
    return small_settings(qwen21_models, data_root)


@pytest.fixture
def parts(run_node: NodeCall) -> dict[str, Any]:
    image, _ = run_node("LoadImage", image="person.png")
    return {
        "clip": run_node("CLIPLoader", clip_name=QWEN21_TEXT_ENCODER, type="qwen_image")[0],
        "vae": run_node("VAELoader", vae_name=QWEN21_VAE)[0],
        "model": run_node("UNETLoader", unet_name=QWEN21_TRANSFORMER_INT8, weight_dtype="default")[0],
        "image": image,
    }


def _encode(run_node: NodeCall, parts: dict[str, Any], prompt: str = "a cat", **images: Any) -> tuple:
    inputs = {"clip": parts["clip"], "prompt": prompt, "negative_prompt": "", "vae": parts["vae"]}
    return run_node("TextEncodeQwenImage21", **inputs, resolution=64, **images)


def _sample(
    run_node: NodeCall, model: Any, positive: Any, negative: Any, latent: Any, cfg: float = 1.0
) -> Any:
    inputs = {"model": model, "positive": positive, "negative": negative, "latent_image": latent}
    return run_node("KSampler", **inputs, cfg=cfg, **SAMPLE)[0]["samples"]


def test_text_to_image_gives_an_rgba_image_that_follows_the_prompt(run_node: NodeCall, parts: dict) -> None:
    positive, negative, latent = _encode(run_node, parts)
    assert latent["samples"].shape == (1, 64, 1, 4, 4)  # resolution 64 with no image: 64 x 64 px
    assert positive.metadata[SLOTS_KEY] == [] and positive.reference_latents == []
    sampled = _sample(run_node, parts["model"], positive, negative, latent)
    image = run_node("VAEDecode", samples={"samples": sampled}, vae=parts["vae"])[0]
    assert image.shape == (1, 64, 64, 4) and float(image.std()) > 0.01
    again = _sample(run_node, parts["model"], positive, negative, latent)
    assert torch.equal(sampled, again)
    other, _, _ = _encode(run_node, parts, prompt="a lighthouse at night")
    assert not torch.allclose(_sample(run_node, parts["model"], other, negative, latent), sampled, atol=1e-3)


def test_reference_images_are_sized_spliced_at_their_slots_and_set_the_latent(
    run_node: NodeCall, parts: dict
) -> None:
    small = torch.rand(1, 64, 96, 3, generator=torch.Generator().manual_seed(5))
    positive, negative, latent = _encode(
        run_node, parts, **{"images.image_1": small, "images.image_2": parts["image"]}
    )
    assert len(positive.reference_latents) == 2 and len(negative.reference_latents) == 2
    slots = positive.metadata[SLOTS_KEY]
    assert len(slots) == 2 and 0 < slots[0] < slots[1] <= positive.prompt_embeds.shape[1]
    width, height = reference_size(96, 64, 64)
    assert latent["samples"].shape[-2:] == (height // 16, width // 16)  # the first reference's size
    assert positive.reference_latents[0].shape[-2:] == (height // 16, width // 16)
    sampled = _sample(run_node, parts["model"], positive, negative, latent, cfg=2.0)
    assert sampled.shape == latent["samples"].shape and torch.isfinite(sampled).all()


def test_the_prefix_cache_options_keep_the_result(run_node: NodeCall, parts: dict) -> None:
    positive, negative, latent = _encode(run_node, parts, **{"images.image_1": parts["image"]})
    results = {}
    for device, dtype in (("off", "default"), ("auto", "default"), ("cpu", "int8")):
        model = run_node("QwenImage21Cache", model=parts["model"], device=device, dtype=dtype)[0]
        results[(device, dtype)] = _sample(run_node, model, positive, negative, latent, cfg=2.0)
    exact = results[("off", "default")]
    assert torch.allclose(results[("auto", "default")], exact, atol=1e-4)
    assert float((results[("cpu", "int8")] - exact).abs().mean()) < 0.05 * float(exact.abs().mean())


def test_the_model_carries_comfyuis_schedule_for_2_1(
    run_node: NodeCall, parts: dict, node_resources: Any
) -> None:
    from genserve.workflows.nodes.base import NodeContext

    ctx = NodeContext("prompt", "1", "KSampler", resources=node_resources)
    assert parts["model"].family == QWEN21
    settings = model_settings(parts["model"], ctx)
    assert math.isclose(settings["shift"], math.exp(0.69)) and settings["cfg_norm_strength"] is None
    plain = run_node("UNETLoader", unet_name=DEMO_TRANSFORMER, weight_dtype="default")[0]
    assert plain.family != QWEN21
    with pytest.raises(GenserveError, match=r"not a Qwen-Image 2\.1 diffusion model") as refused:
        run_node("QwenImage21Cache", model=plain, device="auto", dtype="default")
    assert refused.value.details["field"] == "model"


def test_an_empty_latent_image_becomes_2_1s_layout(run_node: NodeCall, parts: dict) -> None:
    positive, negative, _ = _encode(run_node, parts)
    empty = run_node("EmptyLatentImage", width=64, height=96, batch_size=1)[0]
    sampled = _sample(run_node, parts["model"], positive, negative, empty)
    assert sampled.shape == (1, 64, 1, 6, 4)


def test_a_lora_chain_applies_and_a_wrong_latent_is_refused(run_node: NodeCall, parts: dict) -> None:
    positive, negative, latent = _encode(run_node, parts)
    bf16 = run_node("UNETLoader", unet_name=QWEN21_TRANSFORMER, weight_dtype="default")[0]
    base = _sample(run_node, bf16, positive, negative, latent)
    # the demo LoRA is Qwen-Image's: its modules are not 2.1's, so it is refused naming one
    lora = run_node("LoraLoaderModelOnly", model=bf16, lora_name=DEMO_LORA, strength_model=1.0)[0]
    with pytest.raises(GenserveError, match="does not fit this diffusion model") as refused:
        _sample(run_node, lora, positive, negative, latent)
    assert refused.value.details["field"] == "lora_model_name"
    assert torch.equal(_sample(run_node, bf16, positive, negative, latent), base)  # nothing left behind
    wrong = {"samples": torch.randn(1, 16, 1, 4, 4)}
    with pytest.raises(GenserveError, match="takes 64"):
        _sample(run_node, bf16, positive, negative, wrong)


def test_vae_encode_crops_to_the_16_px_grid_and_keeps_alpha(run_node: NodeCall, parts: dict) -> None:
    image = torch.rand(1, 40, 56, 4)
    latent = run_node("VAEEncode", pixels=image, vae=parts["vae"])[0]["samples"]
    assert latent.shape == (1, 64, 1, 2, 3)
    opaque = image.clone()
    opaque[..., 3] = 1.0
    assert not torch.allclose(run_node("VAEEncode", pixels=opaque, vae=parts["vae"])[0]["samples"], latent)


def test_qwen_images_text_nodes_refuse_the_qwen3_vl_encoder_by_name(run_node: NodeCall, parts: dict) -> None:
    with pytest.raises(GenserveError, match="TextEncodeQwenImage21") as refused:
        run_node("CLIPTextEncode", text="a cat", clip=parts["clip"])
    assert refused.value.details["field"] == "clip_model_name"
