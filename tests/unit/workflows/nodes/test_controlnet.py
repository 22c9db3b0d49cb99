"""ControlNets on the demo models: InstantX (union and inpainting), VideoX-Fun and DiffSynth
block-wise patches change the sample as ComfyUI's nodes do, and only while they apply.

A ControlNet's residuals are linear in its strength, so two at 0.5 give what one at 1.0 gives; a
step window that excludes every step, strength 0, or a run after a patched one gives the plain
model's latent exactly.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo import controlnets
from genserve.models.demo.pipeline import DEMO_LORA, DEMO_TEXT_ENCODER, DEMO_TRANSFORMER, DEMO_VAE
from genserve.models.loaders.control import load_controlnet
from genserve.models.registry import ModelEntry, ModelKind
from genserve.workflows.nodes.base import NodeRegistry
from genserve.workflows.ui_format import registry_object_info
from genserve.workflows.ui_widgets import widget_values
from tests.unit.workflows.nodes.conftest import NodeCall


@pytest.fixture
def parts(run_node: NodeCall) -> dict[str, Any]:
    clip = run_node("CLIPLoader", clip_name=DEMO_TEXT_ENCODER, type="qwen_image")[0]
    image, _ = run_node("LoadImage", image="person.png")
    return {
        "vae": run_node("VAELoader", vae_name=DEMO_VAE)[0],
        "positive": run_node("CLIPTextEncode", text="a red apple", clip=clip)[0],
        "negative": run_node("CLIPTextEncode", text="", clip=clip)[0],
        "latent": run_node("EmptySD3LatentImage", width=64, height=48, batch_size=1)[0],
        "model": run_node("UNETLoader", unet_name=DEMO_TRANSFORMER, weight_dtype="default")[0],
        "image": image,
    }


def _sample(run_node: NodeCall, parts: dict[str, Any], positive: Any = None, negative: Any = None,
            model: Any = None, cfg: float = 1.0, latent: Any = None) -> torch.Tensor:  # fmt: skip
    inputs = {
        "model": model or parts["model"],
        "positive": positive or parts["positive"],
        "negative": negative or parts["negative"],
        "latent_image": latent or parts["latent"],
    }
    common = {"seed": 5, "steps": 2, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple"}
    return run_node("KSampler", **inputs, **common)[0]["samples"]


def _apply(run_node: NodeCall, parts: dict[str, Any], control_net: Any, positive: Any = None,
           negative: Any = None, **settings: Any) -> tuple[Any, Any]:  # fmt: skip
    inputs = {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "vae": parts["vae"], **settings}
    return run_node(
        "ControlNetApplyAdvanced",
        positive=positive or parts["positive"],
        negative=negative or parts["negative"],
        control_net=control_net,
        image=parts["image"],
        **inputs,
    )


@pytest.mark.parametrize("name", [controlnets.UNION, controlnets.FUN])
def test_a_controlnet_steers_sampling_in_proportion_to_its_strength(
    run_node: NodeCall, parts: dict[str, Any], name: str
) -> None:
    control_net = run_node("ControlNetLoader", control_net_name=name)[0]
    assert not control_net.takes_mask
    base = _sample(run_node, parts)
    full = _sample(run_node, parts, *_apply(run_node, parts, control_net))
    assert (full - base).abs().max() > 1e-2
    half = _apply(run_node, parts, control_net, strength=0.5)
    twice = _sample(run_node, parts, *_apply(run_node, parts, control_net, *half, strength=0.5))
    assert torch.allclose(twice, full, atol=1e-4), (twice - full).abs().max()
    off = _apply(run_node, parts, control_net, strength=0.0)
    assert off == (parts["positive"], parts["negative"])
    assert torch.equal(_sample(run_node, parts, *off), base)
    # A window that no step of two reaches (sigmas 1.0 and 0.5; 0.99 of the way is sigma ~0.03).
    late = _apply(run_node, parts, control_net, start_percent=0.99, end_percent=1.0)
    assert torch.equal(_sample(run_node, parts, *late), base)
    guided = _sample(run_node, parts, *_apply(run_node, parts, control_net), cfg=2.5)
    assert (guided - _sample(run_node, parts, cfg=2.5)).abs().max() > 1e-2


def test_apply_refuses_what_could_never_work(run_node: NodeCall, parts: dict[str, Any]) -> None:
    control_net = run_node("ControlNetLoader", control_net_name=controlnets.UNION)[0]
    with pytest.raises(GenserveError) as info:
        _apply(run_node, parts, control_net, vae=None)
    assert info.value.code is ErrorCode.INVALID_INPUT and info.value.details["field"] == "vae"
    with pytest.raises(GenserveError) as info:
        _apply(run_node, parts, control_net, start_percent=0.6, end_percent=0.4)
    assert info.value.details["field"] == "end_percent"
    with pytest.raises(GenserveError) as info:
        run_node("ControlNetLoader", control_net_name="nothing.safetensors")
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND and controlnets.UNION in info.value.message


def test_the_inpainting_controlnet_reads_the_mask(run_node: NodeCall, parts: dict[str, Any]) -> None:
    control_net = run_node("ControlNetLoader", control_net_name=controlnets.INPAINTING)[0]
    assert control_net.takes_mask
    height, width = parts["image"].shape[1:3]
    inputs = {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "vae": parts["vae"]}

    def sampled(mask: torch.Tensor) -> torch.Tensor:
        pair = run_node(
            "ControlNetInpaintingAliMamaApply",
            positive=parts["positive"],
            negative=parts["negative"],
            control_net=control_net,
            image=parts["image"],
            mask=mask,
            **inputs,
        )
        hint = pair[0].controls[-1]
        assert hint.mask is not None and torch.equal(hint.mask, 1.0 - mask.reshape(1, 1, height, width))
        return _sample(run_node, parts, *pair)

    nothing, top = torch.zeros(1, height, width), torch.zeros(1, height, width)
    top[:, : height // 2] = 1.0
    assert (sampled(nothing) - sampled(top)).abs().max() > 1e-3
    assert (sampled(nothing) - _sample(run_node, parts)).abs().max() > 1e-2


def test_a_blockwise_patch_applies_to_its_own_runs_only(run_node: NodeCall, parts: dict[str, Any]) -> None:
    patch = run_node("ModelPatchLoader", name=controlnets.CANNY_PATCH)[0]
    base = _sample(run_node, parts)

    def patched(strength: float, model: Any = None) -> Any:
        return run_node(
            "QwenImageDiffsynthControlnet",
            model=model or parts["model"],
            model_patch=patch,
            vae=parts["vae"],
            image=parts["image"],
            strength=strength,
        )[0]

    assert torch.equal(_sample(run_node, parts, model=patched(0.0)), base)
    steered = _sample(run_node, parts, model=patched(1.0))
    assert (steered - base).abs().max() > 1e-2
    assert torch.equal(_sample(run_node, parts), base)
    # The patch lives with the run that asked for it: concurrent plain runs see the plain model.
    results: dict[str, torch.Tensor] = {}

    def run(key: str, model: Any) -> None:
        results[key] = _sample(run_node, parts, model=model)

    threads = [threading.Thread(target=run, args=(f"{k}{i}", m)) for i in range(2)
               for k, m in (("plain", parts["model"]), ("patched", patched(1.0)))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(results[f"plain{i}"], base) for i in range(2))
    assert all(torch.equal(results[f"patched{i}"], steered) for i in range(2))
    with_lora = run_node(
        "LoraLoaderModelOnly", model=parts["model"], lora_name=DEMO_LORA, strength_model=1.0
    )[0]
    assert patched(1.0, with_lora).loras == with_lora.loras


def test_odd_latent_sizes_sample_as_comfyui_pads_them(run_node: NodeCall, parts: dict[str, Any]) -> None:
    latent = run_node("EmptySD3LatentImage", width=76, height=56, batch_size=1)[0]
    assert latent["samples"].shape == (1, 16, 1, 7, 9)
    out = _sample(run_node, parts, latent=latent)
    assert out.shape == (1, 16, 1, 7, 9) and out.abs().sum() > 0


def test_a_file_of_another_kind_is_not_loaded_as_a_controlnet(demo_models: Path) -> None:
    lora = demo_models / "loras" / DEMO_LORA
    with pytest.raises(GenserveError) as info:
        load_controlnet(ModelEntry(ModelKind.CONTROLNET, lora.name, lora), torch.device("cpu"), torch.float32)
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND and "not a Qwen-Image" in info.value.message
    assert str(demo_models) not in info.value.message


def test_ui_widgets_of_the_controlnet_templates_convert(pipeline_nodes: NodeRegistry) -> None:
    info = {
        name: registry_object_info(pipeline_nodes)(name)
        for name in ("ResizeImageMaskNode", "ControlNetApplyAdvanced", "QwenImageDiffsynthControlnet")
    }
    resize = widget_values(info["ResizeImageMaskNode"], ["scale total pixels", 1.6, "area"])
    assert resize == {
        "resize_type": "scale total pixels",
        "resize_type.megapixels": 1.6,
        "scale_method": "area",
    }
    apply = widget_values(info["ControlNetApplyAdvanced"], [0.8, 0.1, 0.9])
    assert apply == {"strength": 0.8, "start_percent": 0.1, "end_percent": 0.9}
    assert info["ControlNetApplyAdvanced"]["output"] == ["CONDITIONING", "CONDITIONING"]
    assert info["ControlNetApplyAdvanced"]["input"]["optional"] == {"vae": ["VAE"]}
    assert widget_values(info["QwenImageDiffsynthControlnet"], [0.7]) == {"strength": 0.7}
