"""EmptyLatentImage gives genserve's Qwen-Image latent, FluxKontextMultiReferenceLatentMethod keeps
the conditioning and records a by-index method (refusing the placements genserve cannot do), and
KSampler's seed carries ComfyUI's ``control_after_generate`` in object_info."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from genserve.app.runtime import Runtime
from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.demo import demo_workflow
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.runner import WorkflowRunner


def _reference_prompt(method: str) -> dict[str, Any]:
    clip = demo_workflow("text-to-image")
    [loader] = [node for node in clip.values() if node["class_type"] == "CLIPLoader"]
    return {
        "1": loader,
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["1", 0]}},
        "3": {
            "class_type": "FluxKontextMultiReferenceLatentMethod",
            "inputs": {"conditioning": ["2", 0], "reference_latents_method": method},
        },
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 96, "batch_size": 2}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }


def test_empty_latent_image_and_reference_method(runtime: Runtime, data_root: Path) -> None:
    runner = WorkflowRunner(pipeline_registry(runtime.models.registry, data_root / "inputs"))
    resources = PipelineResources.from_runtime(runtime, input_dir=data_root / "inputs")
    result = runner.run(_reference_prompt("index_timestep_zero"), resources=resources)
    latent = result.values["4"][0]["samples"]
    assert latent.shape == (2, 16, 1, 12, 8) and not latent.any()
    encoded, marked = result.values["2"][0], result.values["3"][0]
    assert torch.equal(marked.prompt_embeds, encoded.prompt_embeds)
    assert marked.metadata["reference_latents_method"] == "index_timestep_zero"
    assert "reference_latents_method" not in encoded.metadata  # the cached input is left as it was
    indexed = runner.run(_reference_prompt("index"), resources=resources).values["3"][0]
    assert indexed.metadata["reference_latents_method"] == "index"


@pytest.mark.parametrize("method", ["offset", "uxo/uno"])
def test_placements_the_qwen_sampler_cannot_do_are_refused(
    runtime: Runtime, data_root: Path, method: str
) -> None:
    runner = WorkflowRunner(pipeline_registry(runtime.models.registry, data_root / "inputs"))
    resources = PipelineResources.from_runtime(runtime, input_dir=data_root / "inputs")
    with pytest.raises(GenserveError) as info:
        runner.run(_reference_prompt(method), resources=resources)
    assert info.value.code is ErrorCode.INVALID_INPUT
    assert info.value.details["field"] == "reference_latents_method"
    assert "by index only" in info.value.message and method in info.value.message


def test_ksampler_seed_has_control_after_generate(runtime: Runtime) -> None:
    info = pipeline_registry(runtime.models.registry).object_info()
    seed = info["KSampler"]["input"]["required"]["seed"]
    assert seed[0] == "INT" and seed[1]["control_after_generate"] is True and seed[1]["default"] == 0
    assert info["EmptyLatentImage"]["input"]["required"]["width"][1] == {
        "default": 512,
        "min": 16,
        "max": 16384,
        "step": 8,
    }
