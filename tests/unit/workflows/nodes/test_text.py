"""TextGenerate on the demo LLM: CLIPLoader hands on an llm/ model, the node runs the
text_generation service (same text as the service for the same request), seeds repeat, a
vision-language LLM is shown the image, and what the model cannot read (an image for a text-only
LLM), run (a text encoder) or switch (thinking without a template
switch) is refused naming the input; min_p and the penalties reach the sampler. ``sampling_mode``
is ComfyUI's V3 dynamic combo: only the chosen option's ``sampling_mode.*`` inputs are read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genserve.app.runtime import Runtime
from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.llm import DEMO_LLM
from genserve.models.demo.vision_chat import DEMO_VL_LLM
from genserve.models.registry import ModelKind
from genserve.workflows.graph import GraphValidationError, parse_graph
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.nodes.text import split_thinking
from genserve.workflows.runner import WorkflowRunner


@pytest.fixture
def resources(runtime: Runtime, data_root: Path) -> PipelineResources:
    return PipelineResources.from_runtime(runtime, input_dir=data_root / "inputs")


@pytest.fixture
def runner(runtime: Runtime, data_root: Path) -> WorkflowRunner:
    return WorkflowRunner(pipeline_registry(runtime.models.registry, data_root / "inputs"), cache_size=0)


def text_prompt(clip_name: str = DEMO_LLM, **inputs: Any) -> dict[str, Any]:
    generate = {
        "clip": ["1", 0],
        "prompt": "Describe a red fox.",
        "max_length": 12,
        "sampling_mode": "on",
        "sampling_mode.temperature": 0.9,
        "sampling_mode.top_k": 20,
        "sampling_mode.top_p": 0.95,
        "sampling_mode.seed": 7,
        **inputs,
    }
    return {
        "1": {"class_type": "CLIPLoader", "inputs": {"clip_name": clip_name, "type": "stable_diffusion"}},
        "2": {"class_type": "TextGenerate", "inputs": generate},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }


def generated(runner: WorkflowRunner, resources: PipelineResources, prompt: dict[str, Any]) -> str:
    result = runner.run(prompt, resources=resources)
    text: str = result.values["2"][0]
    assert result.outputs["9"] == {"text": [text]}
    return text


def test_text_generate_runs_the_demo_llm_as_the_service_does(
    runtime: Runtime, runner: WorkflowRunner, resources: PipelineResources
) -> None:
    text = generated(runner, resources, text_prompt())
    assert text and generated(runner, resources, text_prompt()) == text  # same seed, same text
    response: Any = runtime.engine.run_sync(
        "text_generation",
        {
            "model": DEMO_LLM,
            "messages": [{"role": "user", "content": "Describe a red fox."}],
            "max_tokens": 12,
            "temperature": 0.9,
            "top_k": 20,
            "top_p": 0.95,
            "min_p": 0.05,  # ComfyUI's defaults, applied when the prompt leaves them out
            "repetition_penalty": 1.05,
            "thinking": False,
            "seed": 7,
        },
    )
    assert split_thinking(response.text)[0] == text


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("sampling_mode.min_p", 1.0),
        ("sampling_mode.repetition_penalty", 5.0),
        ("sampling_mode.presence_penalty", 5.0),
    ],
)
def test_min_p_and_the_penalties_change_the_text(
    runner: WorkflowRunner, resources: PipelineResources, option: str, value: float
) -> None:
    base = generated(runner, resources, text_prompt(max_length=24, **{"sampling_mode.temperature": 0.3}))
    changed = text_prompt(max_length=24, **{"sampling_mode.temperature": 0.3, option: value})
    assert generated(runner, resources, changed) == generated(runner, resources, changed) != base


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"thinking": True}, "thinking"),
        ({"thinking": True, "use_default_template": False}, "thinking"),
        ({"sampling_mode.repetition_penalty": 0.0}, "sampling_mode.repetition_penalty"),
    ],
)
def test_what_the_llm_cannot_do_is_refused_naming_the_input(
    runner: WorkflowRunner, resources: PipelineResources, inputs: dict[str, Any], field: str
) -> None:
    with pytest.raises(GenserveError) as info:
        runner.run(text_prompt(**inputs), resources=resources)
    assert info.value.code is ErrorCode.INVALID_INPUT and info.value.details["field"] == field


def test_sampling_off_is_greedy_whatever_the_seed(
    runner: WorkflowRunner, resources: PipelineResources
) -> None:
    greedy = generated(runner, resources, text_prompt(sampling_mode="off", **{"sampling_mode.seed": 1}))
    assert (
        generated(runner, resources, text_prompt(sampling_mode="off", **{"sampling_mode.seed": 2})) == greedy
    )


def test_an_image_for_a_text_only_llm_is_refused_naming_it(
    runner: WorkflowRunner, resources: PipelineResources
) -> None:
    prompt = text_prompt(image=["3", 0])
    prompt["3"] = {"class_type": "LoadImage", "inputs": {"image": "person.png"}}
    with pytest.raises(GenserveError) as info:
        runner.run(prompt, resources=resources)
    assert info.value.code is ErrorCode.INVALID_INPUT and info.value.details["field"] == "image"
    assert "reads text only" in info.value.message


def test_a_vision_llm_is_shown_the_image(runner: WorkflowRunner, resources: PipelineResources) -> None:
    """ComfyUI's llm_qwen3vl_text_gen template: LoadImage -> TextGenerate(image) on a VL model."""

    def seen(image: str | None, **inputs: Any) -> str:
        prompt = text_prompt(DEMO_VL_LLM, sampling_mode="off", **inputs)
        if image is not None:
            prompt["2"]["inputs"]["image"] = ["3", 0]
            prompt["3"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        return generated(runner, resources, prompt)

    person, cloth, blind = seen("person.png"), seen("cloth.png"), seen(None)
    assert len({person, cloth, blind}) == 3 and seen("person.png") == person
    with pytest.raises(GenserveError) as info:
        seen("person.png", use_default_template=False)
    assert info.value.details["field"] == "image" and "use_default_template" in info.value.message


def test_a_text_encoder_is_not_an_llm(
    runtime: Runtime, runner: WorkflowRunner, resources: PipelineResources
) -> None:
    [encoder, *_] = runtime.models.registry.available(ModelKind.TEXT_ENCODER)
    with pytest.raises(GenserveError) as info:
        runner.run(text_prompt(encoder), resources=resources)
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND and DEMO_LLM in info.value.message


def test_clip_loader_lists_llms_and_text_generate_has_comfyuis_inputs(runner: WorkflowRunner) -> None:
    info = runner.registry.object_info()
    assert DEMO_LLM in info["CLIPLoader"]["input"]["required"]["clip_name"][0]
    node = info["TextGenerate"]
    assert node["input_order"] == {
        "required": ["clip", "prompt", "max_length", "sampling_mode"],
        "optional": ["image", "video", "audio", "system_prompt", "thinking", "use_default_template", "mtp"],
    }
    assert node["output_name"] == ["generated_text", "thinking"]
    kind, options = node["input"]["required"]["sampling_mode"]
    assert kind == "COMFY_DYNAMICCOMBO_V3" and options["display_name"] == "Sampling Mode"
    on, off = options["options"]
    assert on["key"] == "on" and off == {"key": "off", "inputs": {"required": {}}}
    assert list(on["inputs"]["required"]) == [
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "repetition_penalty",
        "seed",
    ]
    assert on["inputs"]["required"]["temperature"] == [
        "FLOAT",
        {"default": 0.7, "min": 0.01, "max": 2.0, "step": 0.000001},
    ]
    assert on["inputs"]["optional"] == {
        "presence_penalty": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 5.0, "step": 0.01}]
    }


def test_the_chosen_options_inputs_are_checked_and_the_others_ignored(runner: WorkflowRunner) -> None:
    bad = {"sampling_mode.temperature": 9.0, "sampling_mode.seed": -1, "sampling_mode.nope": 1}
    with pytest.raises(GraphValidationError) as info:
        parse_graph(text_prompt(**bad), runner.registry)
    found = {(p.input_name, p.kind) for p in info.value.problems}
    assert found == {
        ("sampling_mode.temperature", "value_bigger_than_max"),
        ("sampling_mode.seed", "value_smaller_than_min"),
    }
    graph = parse_graph(text_prompt(sampling_mode="off", **bad), runner.registry)
    assert graph.nodes["2"].values == {
        "prompt": "Describe a red fox.",
        "max_length": 12,
        "sampling_mode": "off",
    }
    with pytest.raises(GraphValidationError) as info:
        parse_graph(text_prompt(sampling_mode="greedy"), runner.registry)
    [problem] = info.value.problems
    assert (problem.input_name, problem.kind) == ("sampling_mode", "value_not_in_list")
    assert "on, off" in problem.message


def test_split_thinking() -> None:
    assert split_thinking("<think>plan it</think>\nA fox.") == ("A fox.", "plan it")
    assert split_thinking("A fox.") == ("A fox.", "")
