"""Qwen-Image 2.1's refine_prompt chain on the demo prompt enhancer (a single-file Qwen3.5 in
text_encoders/): CLIPLoader hands it to TextGenerate as an LLM, which writes the same text for the
same seed, switches thinking, is shown an image, takes mtp auto and off alike and refuses a pinned
MTP depth naming the input; CLIPLoader lists the file once, and a text encoder node refuses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genserve.config import Settings
from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.qwen35_llm import DEMO_QWEN35_LLM, build_qwen35_llm
from genserve.workflows.nodes.base import NodeRegistry
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.runner import WorkflowRunner
from tests.conftest import small_settings


@pytest.fixture(scope="module")
def enhancer_models(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models plus the demo prompt enhancer beside the text encoders."""
    models = tmp_path_factory.mktemp("enhancer") / "models"
    for kind in ("diffusion_models", "text_encoders", "vae", "llm"):
        (models / kind).mkdir(parents=True)
        for entry in (demo_models / kind).iterdir():
            (models / kind / entry.name).symlink_to(entry)
    build_qwen35_llm(models / "text_encoders" / DEMO_QWEN35_LLM, seed=0)
    return models


@pytest.fixture
def settings(enhancer_models: Path, data_root: Path) -> Settings:
    return small_settings(enhancer_models, data_root)


@pytest.fixture
def registry(enhancer_models: Path, data_root: Path, resources: PipelineResources) -> NodeRegistry:
    return pipeline_registry(resources.models.registry, data_root / "inputs")


@pytest.fixture
def runner(registry: NodeRegistry) -> WorkflowRunner:
    return WorkflowRunner(registry, cache_size=0)


@pytest.fixture
def resources(runtime: Any, data_root: Path) -> PipelineResources:
    return PipelineResources.from_runtime(runtime, input_dir=data_root / "inputs")


def refine(**inputs: Any) -> dict[str, Any]:
    generate = {
        "clip": ["1", 0],
        "prompt": "a red fox in the snow",
        "system_prompt": "Rewrite the prompt in detail.",
        "max_length": 10,
        "sampling_mode": "on",
        "sampling_mode.seed": 5,
        **inputs,
    }
    return {
        "1": {"class_type": "CLIPLoader", "inputs": {"clip_name": DEMO_QWEN35_LLM, "type": "qwen_image"}},
        "2": {"class_type": "TextGenerate", "inputs": generate},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }


def generated(runner: WorkflowRunner, resources: PipelineResources, prompt: dict[str, Any]) -> str:
    text: str = runner.run(prompt, resources=resources).values["2"][0]
    return text


def test_text_generate_runs_the_prompt_enhancer(runner: WorkflowRunner, resources: PipelineResources) -> None:
    text = generated(runner, resources, refine())
    assert text and generated(runner, resources, refine()) == text
    assert generated(runner, resources, refine(**{"sampling_mode.seed": 6})) != text
    assert generated(runner, resources, refine(mtp="off")) == text
    assert generated(runner, resources, refine(mtp="auto", thinking=True)) != text


def test_the_i2i_enhancer_is_shown_the_image(runner: WorkflowRunner, resources: PipelineResources) -> None:
    def seen(image: str | None) -> str:
        prompt = refine(sampling_mode="off")
        if image is not None:
            prompt["2"]["inputs"]["image"] = ["3", 0]
            prompt["3"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        return generated(runner, resources, prompt)

    assert len({seen("person.png"), seen("cloth.png"), seen(None)}) == 3


def test_a_pinned_mtp_depth_is_refused_naming_it(
    runner: WorkflowRunner, resources: PipelineResources
) -> None:
    with pytest.raises(GenserveError) as info:
        runner.run(refine(mtp="3"), resources=resources)
    assert info.value.code is ErrorCode.INVALID_INPUT and info.value.details["field"] == "mtp"
    assert runner.registry.object_info()["TextGenerate"]["input"]["optional"]["mtp"][0] == [
        "auto",
        "off",
        "2",
        "3",
        "4",
        "5",
    ]


def test_clip_loader_lists_it_once_and_an_encoder_node_refuses_it(
    runner: WorkflowRunner, resources: PipelineResources
) -> None:
    names = runner.registry.object_info()["CLIPLoader"]["input"]["required"]["clip_name"][0]
    assert names.count(DEMO_QWEN35_LLM) == 1
    prompt = refine()
    prompt["2"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": "a fox"}}
    prompt["9"] = {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}
    with pytest.raises(GenserveError) as info:
        runner.run(prompt, resources=resources)
    assert "language model" in info.value.message and DEMO_QWEN35_LLM in info.value.message
