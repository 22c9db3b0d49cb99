"""The ComfyUI pipeline node types on the demo models: the demo workflows run end to end, reuse
cached loaders and encodings, match the edit service, validate inputs and stop when cancelled."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from genserve.app.runtime import Runtime
from genserve.errors import ErrorCode, GenserveError
from genserve.services.pipeline.imaging import dimensions_for_area
from genserve.workflows.demo import (
    DEMO_WORKFLOWS,
    SMALL_MEGAPIXELS,
    demo_workflow,
    write_demo_workflows,
)
from genserve.workflows.events import Progress, WorkflowEvent
from genserve.workflows.graph import GraphValidationError
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.nodes.image import COMFY_MEGAPIXEL
from genserve.workflows.runner import RunResult, WorkflowRunner

PERSON_SIZE = (192, 256)  # the demo person picture


@pytest.fixture
def resources(runtime: Runtime, data_root: Path) -> PipelineResources:
    return PipelineResources.from_runtime(runtime, input_dir=data_root / "inputs")


@pytest.fixture
def pipeline_runner(runtime: Runtime, data_root: Path) -> WorkflowRunner:
    return WorkflowRunner(pipeline_registry(runtime.models.registry, data_root / "inputs"))


def saved_path(result: RunResult, resources: PipelineResources) -> Path:
    [entry] = result.outputs["60"]["images"]
    assert entry["type"] == "output"
    return resources.sandbox.default_output_dir / entry["subfolder"] / entry["filename"]


def saved_image(result: RunResult, resources: PipelineResources) -> Image.Image:
    with Image.open(saved_path(result, resources)) as image:
        image.load()
        return image.copy()


def expected_size(name: str) -> tuple[int, int]:
    if name == "text-to-image":
        return (128, 128)
    steps = 32 if name == "image-edit" else 16
    return dimensions_for_area(SMALL_MEGAPIXELS * COMFY_MEGAPIXEL, *PERSON_SIZE, steps)


@pytest.mark.parametrize("name", DEMO_WORKFLOWS)
def test_demo_workflow_saves_a_png_of_the_expected_size(
    name: str, pipeline_runner: WorkflowRunner, resources: PipelineResources
) -> None:
    result = pipeline_runner.run(demo_workflow(name), resources=resources)
    assert saved_path(result, resources).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = saved_image(result, resources)
    assert image.size == expected_size(name)
    assert result.outputs["60"]["images"][0]["filename"].endswith("_00001_.png")


def test_seed_change_reuses_loaders_and_text_encoding(
    runtime: Runtime, pipeline_runner: WorkflowRunner, resources: PipelineResources
) -> None:
    workflow = demo_workflow("image-edit")
    first = pipeline_runner.run(workflow, resources=resources)
    workflow["3"]["inputs"]["seed"] = 7
    second = pipeline_runner.run(workflow, resources=resources)
    assert set(second.executed) == {"3", "8", "60"}
    loaders_and_encoders = {"37", "38", "39", "89", "66", "75", "78", "106", "93", "88", "110", "111"}
    assert loaders_and_encoders <= set(second.cached)
    # New seed, new image; a different file name, since SaveImage never overwrites.
    first_name = first.outputs["60"]["images"][0]["filename"]
    assert second.outputs["60"]["images"][0]["filename"] != first_name
    a = np.asarray(saved_image(first, resources))
    b = np.asarray(saved_image(second, resources))
    assert a.shape == b.shape and not np.array_equal(a, b)
    # Cached MODEL/CLIP/VAE values only name models: nothing stays pinned between runs.
    assert all(stats.pinned == 0 for stats in runtime.models.stats())


def test_image_edit_workflow_matches_the_edit_service(
    runtime: Runtime, pipeline_runner: WorkflowRunner, resources: PipelineResources, data_root: Path
) -> None:
    workflow = demo_workflow("image-edit")
    result = pipeline_runner.run(workflow, resources=resources)
    sampler = workflow["3"]["inputs"]
    response: Any = runtime.engine.run_sync(
        "edit",
        {
            "image1_path": str(data_root / "inputs/person.png"),
            "image2_path": str(data_root / "inputs/cloth.png"),
            "prompt": workflow["111"]["inputs"]["prompt"],
            "negative_prompt": "",
            "vae_model_name": workflow["39"]["inputs"]["vae_name"],
            "clip_model_name": workflow["38"]["inputs"]["clip_name"],
            "unet_model_name": workflow["37"]["inputs"]["unet_name"],
            "lora_model_name": workflow["89"]["inputs"]["lora_name"],
            "lora_strength": workflow["89"]["inputs"]["strength_model"],
            "sampling_params": {
                k: sampler[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")
            },
            "model_transform_params": {
                "shift": workflow["66"]["inputs"]["shift"],
                "strength": workflow["75"]["inputs"]["strength"],
            },
            "upscale_method": "lanczos",
            "megapixels": SMALL_MEGAPIXELS * COMFY_MEGAPIXEL / 1_000_000,  # the service counts 10**6
            "output_format": "png",
        },
    )
    with Image.open(response.image_file_path) as service_image:
        expected = np.asarray(service_image.convert("RGB"))
    assert np.array_equal(np.asarray(saved_image(result, resources)), expected)


def _invalid(runner: WorkflowRunner, workflow: dict[str, Any]) -> GraphValidationError:
    with pytest.raises(GraphValidationError) as info:
        runner.validate(workflow)
    return info.value


def test_validation_names_the_node_and_the_input(pipeline_runner: WorkflowRunner) -> None:
    workflow = demo_workflow("text-to-image")
    workflow["3"]["inputs"]["steps"] = 0
    workflow["3"]["inputs"]["sampler_name"] = "nope"
    workflow["37"]["inputs"]["unet_name"] = "missing.safetensors"
    error = _invalid(pipeline_runner, workflow)
    assert error.code is ErrorCode.INVALID_INPUT
    found = {(p.node_id, p.input_name, p.kind) for p in error.problems}
    assert ("3", "steps", "value_smaller_than_min") in found
    assert ("3", "sampler_name", "value_not_in_list") in found
    assert ("37", "unet_name", "value_not_in_list") in found
    assert "node 3 (KSampler), input 'steps'" in error.message


def test_validation_refuses_a_wrong_link_type_and_a_missing_image(pipeline_runner: WorkflowRunner) -> None:
    workflow = demo_workflow("image-to-image")
    workflow["88"]["inputs"]["vae"] = ["38", 0]  # a CLIP where a VAE belongs
    workflow["78"]["inputs"]["image"] = "../secret.png"
    found = {(p.node_id, p.input_name) for p in _invalid(pipeline_runner, workflow).problems}
    assert {("88", "vae"), ("78", "image")} <= found


def test_cancel_during_ksampler_stops_within_a_step(
    pipeline_runner: WorkflowRunner, resources: PipelineResources
) -> None:
    workflow = demo_workflow("text-to-image")
    workflow["3"]["inputs"]["steps"] = 50
    cancel = threading.Event()
    steps: list[int] = []

    def on_event(event: WorkflowEvent) -> None:
        if isinstance(event, Progress) and event.node == "3":
            steps.append(event.value)
            cancel.set()

    started = time.perf_counter()
    with pytest.raises(GenserveError) as info:
        pipeline_runner.run(workflow, resources=resources, on_event=on_event, cancel_event=cancel)
    assert info.value.code is ErrorCode.CANCELLED
    assert info.value.details["node_id"] == "3"
    assert steps == [1]
    assert time.perf_counter() - started < 30


def test_an_edited_input_image_is_read_again(
    pipeline_runner: WorkflowRunner, resources: PipelineResources, data_root: Path
) -> None:
    workflow = demo_workflow("image-to-image")
    pipeline_runner.run(workflow, resources=resources)
    person = data_root / "inputs/person.png"
    with Image.open(person) as image:
        Image.eval(image.convert("RGB"), lambda v: 255 - v).save(person)
    again = pipeline_runner.run(workflow, resources=resources)
    assert {"78", "93", "88", "3"} <= set(again.executed)
    assert {"37", "38", "39", "6", "7"} <= set(again.cached)


def test_object_info_lists_comfyui_inputs_and_demo_model_names(runtime: Runtime, data_root: Path) -> None:
    info = pipeline_registry(runtime.models.registry, data_root / "inputs").object_info()
    assert list(info["KSampler"]["input"]["required"]) == [
        "model",
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
        "denoise",
    ]
    assert "qwen_image_vae.safetensors" in info["VAELoader"]["input"]["required"]["vae_name"][0]
    assert "person.png" in info["LoadImage"]["input"]["required"]["image"][0]
    assert info["LoadImage"]["output"] == ["IMAGE", "MASK"]
    assert info["SaveImage"]["output_node"] is True


def test_demo_workflow_files_validate_as_written(tmp_path: Path, pipeline_runner: WorkflowRunner) -> None:
    paths = write_demo_workflows(tmp_path / "workflows")
    assert [p.stem for p in paths] == list(DEMO_WORKFLOWS)
    for path in paths:
        graph = pipeline_runner.validate(json.loads(path.read_text()))
        assert graph.output_ids == ("60",)


def test_a_missing_input_image_is_refused_naming_the_node(
    pipeline_runner: WorkflowRunner, data_root: Path
) -> None:
    workflow = demo_workflow("image-to-image")
    (data_root / "inputs/person.png").unlink()
    found = {(p.node_id, p.input_name) for p in _invalid(pipeline_runner, workflow).problems}
    assert found == {("78", "image")}
