"""The custom-sampling node types on the demo models: the pieces give KSampler's latent bit for
bit, ManualSigmas and BasicScheduler give the schedules ComfyUI's do, DisableNoise and a noise mask
keep what they should, and a turbo-template-shaped graph runs to a saved image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from genserve.app.runtime import Runtime
from genserve.errors import GenserveError
from genserve.workflows.demo import CLIP, UNET, VAE
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.runner import WorkflowRunner
from tests.unit.workflows.nodes.conftest import NodeCall


@pytest.fixture
def parts(run_node: NodeCall) -> dict[str, Any]:
    """Model, prompts and an empty 64x64 latent, from the real loader and encoder nodes."""
    [unet] = run_node("UNETLoader", unet_name=UNET, weight_dtype="default")
    [model] = run_node("ModelSamplingAuraFlow", model=unet, shift=3.0)
    [clip] = run_node("CLIPLoader", clip_name=CLIP, type="qwen_image")
    [positive] = run_node("CLIPTextEncode", text="a red apple", clip=clip)
    [negative] = run_node("CLIPTextEncode", text="blurry", clip=clip)
    [latent] = run_node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    return {"model": model, "positive": positive, "negative": negative, "latent": latent}


@pytest.mark.parametrize(("sampler", "scheduler", "cfg"), [("euler", "simple", 1.0), ("heun", "normal", 2.5)])
def test_custom_sampling_pieces_give_ksamplers_latent(
    run_node: NodeCall,
    parts: dict[str, Any],
    sampler: str,
    scheduler: str,
    cfg: float,
) -> None:
    common = {"model": parts["model"], "positive": parts["positive"], "negative": parts["negative"]}
    [expected] = run_node(
        "KSampler",
        **common,
        seed=7,
        steps=3,
        cfg=cfg,
        sampler_name=sampler,
        scheduler=scheduler,
        latent_image=parts["latent"],
        denoise=1.0,
    )
    [noise] = run_node("RandomNoise", noise_seed=7)
    [guider] = run_node("CFGGuider", **common, cfg=cfg)
    [picked] = run_node("KSamplerSelect", sampler_name=sampler)
    [sigmas] = run_node("BasicScheduler", model=parts["model"], scheduler=scheduler, steps=3, denoise=1.0)
    output, denoised = run_node(
        "SamplerCustomAdvanced",
        noise=noise,
        guider=guider,
        sampler=picked,
        sigmas=sigmas,
        latent_image=parts["latent"],
    )
    assert torch.equal(output["samples"], expected["samples"])
    assert denoised["samples"].shape == output["samples"].shape == (1, 16, 1, 8, 8)


def test_basic_scheduler_gives_steps_plus_one_sigmas_ending_in_zero(
    run_node: NodeCall, parts: dict[str, Any]
) -> None:
    [sigmas] = run_node("BasicScheduler", model=parts["model"], scheduler="simple", steps=4, denoise=1.0)
    # ComfyUI's ModelSamplingAuraFlow(shift=3) + simple, 4 steps.
    assert torch.allclose(sigmas, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]), atol=1e-3)
    [half] = run_node("BasicScheduler", model=parts["model"], scheduler="simple", steps=4, denoise=0.5)
    assert len(half) == 5 and float(half[0]) < 1.0 and float(half[-1]) == 0.0
    [none] = run_node("BasicScheduler", model=parts["model"], scheduler="simple", steps=4, denoise=0.0)
    assert none.numel() == 0


def test_manual_sigmas_reads_every_number_and_set_first_sigma_replaces_the_first(run_node: NodeCall) -> None:
    text = "1.0, 0.978453, 0.95418,0.5 ;  .25\n0"
    [sigmas] = run_node("ManualSigmas", sigmas=text)
    assert torch.allclose(sigmas, torch.tensor([1.0, 0.978453, 0.95418, 0.5, 0.25, 0.0]))
    [changed] = run_node("SetFirstSigma", sigmas=sigmas, sigma=0.99)
    assert float(changed[0]) == pytest.approx(0.99) and float(sigmas[0]) == 1.0  # input untouched
    assert torch.equal(changed[1:], sigmas[1:])


def test_disable_noise_and_a_noise_mask_keep_the_latent(run_node: NodeCall, parts: dict[str, Any]) -> None:
    source = {"samples": torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(1))}
    [guider] = run_node("BasicGuider", model=parts["model"], conditioning=parts["positive"])
    [picked] = run_node("KSamplerSelect", sampler_name="euler")
    [sigmas] = run_node("ManualSigmas", sigmas="0.5, 0.25, 0")
    [no_noise] = run_node("DisableNoise")
    run = {"guider": guider, "sampler": picked, "sigmas": sigmas}
    first, _ = run_node("SamplerCustomAdvanced", noise=no_noise, **run, latent_image=source)
    again, _ = run_node("SamplerCustomAdvanced", noise=no_noise, **run, latent_image=source)
    assert torch.equal(first["samples"], again["samples"])  # no noise: nothing random left
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0  # repaint the right half only
    [masked] = run_node("SetLatentNoiseMask", samples=source, mask=mask)
    [noise] = run_node("RandomNoise", noise_seed=3)
    out, _ = run_node("SamplerCustomAdvanced", noise=noise, **run, latent_image=masked)
    kept, repainted = out["samples"][..., :4], out["samples"][..., 4:]
    assert torch.allclose(kept, source["samples"][..., :4])
    assert not torch.allclose(repainted, source["samples"][..., 4:])
    assert out["noise_mask"] is masked["noise_mask"]


def test_bad_sigmas_are_refused_naming_the_input(run_node: NodeCall, parts: dict[str, Any]) -> None:
    [guider] = run_node("BasicGuider", model=parts["model"], conditioning=parts["positive"])
    [picked] = run_node("KSamplerSelect", sampler_name="euler")
    [noise] = run_node("RandomNoise", noise_seed=0)
    [sigmas] = run_node("ManualSigmas", sigmas="1, 0, 0.5, 0")
    with pytest.raises(GenserveError) as caught:
        run_node(
            "SamplerCustomAdvanced",
            noise=noise,
            guider=guider,
            sampler=picked,
            sigmas=sigmas,
            latent_image=parts["latent"],
        )
    assert caught.value.details.get("field") == "sigmas"
    [empty] = run_node("ManualSigmas", sigmas="")
    same, _ = run_node(
        "SamplerCustomAdvanced",
        noise=noise,
        guider=guider,
        sampler=picked,
        sigmas=empty,
        latent_image=parts["latent"],
    )
    assert same["samples"] is parts["latent"]["samples"]  # nothing to do: ComfyUI returns the input


def turbo_t2i_workflow() -> dict[str, Any]:
    """The shape of ComfyUI's Qwen-Image turbo text-to-image template, on the demo models."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP, "type": "qwen_image"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["2", 0]}},
        "5": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        "6": {
            "class_type": "ResolutionSelector",
            "inputs": {"aspect_ratio": "4:3 (Standard)", "megapixels": 0.1, "multiple": 16},
        },
        "7": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": ["6", 0], "height": ["6", 1], "batch_size": 1},
        },
        "8": {"class_type": "RandomNoise", "inputs": {"noise_seed": 424242}},
        "9": {
            "class_type": "CFGGuider",
            "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "cfg": 1.0},
        },
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {"class_type": "ManualSigmas", "inputs": {"sigmas": "1.0, 0.414568, 0"}},
        "12": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["8", 0],
                "guider": ["9", 0],
                "sampler": ["10", 0],
                "sigmas": ["11", 0],
                "latent_image": ["7", 0],
            },
        },
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 1], "vae": ["3", 0]}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "turbo"}},
    }


def test_a_turbo_template_shaped_graph_saves_an_image_of_the_selected_size(
    runtime: Runtime, data_root: Path, node_resources: PipelineResources
) -> None:
    runner = WorkflowRunner(pipeline_registry(runtime.models.registry, data_root / "inputs"))
    result = runner.run(turbo_t2i_workflow(), resources=node_resources)
    [entry] = result.outputs["14"]["images"]
    path = node_resources.sandbox.default_output_dir / entry["subfolder"] / entry["filename"]
    with Image.open(path) as image:
        # 0.1 MP at 4:3 in multiples of 16: ComfyUI's ResolutionSelector arithmetic.
        assert image.size == (368, 288)


def test_ksampler_honours_a_latent_noise_mask(run_node: NodeCall, parts: dict[str, Any]) -> None:
    source = {"samples": torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(2))}
    mask = torch.zeros(1, 8, 8)
    mask[:, 4:] = 1.0  # repaint the bottom half only
    [masked] = run_node("SetLatentNoiseMask", samples=source, mask=mask)
    [out] = run_node(
        "KSampler",
        model=parts["model"],
        seed=5,
        steps=2,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        positive=parts["positive"],
        negative=parts["negative"],
        latent_image=masked,
        denoise=1.0,
    )
    assert torch.allclose(out["samples"][..., :4, :], source["samples"][..., :4, :])
    assert not torch.allclose(out["samples"][..., 4:, :], source["samples"][..., 4:, :])
