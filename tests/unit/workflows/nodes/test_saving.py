"""SaveImage, SaveImageAdvanced and PreviewImage: ComfyUI's PNG text chunks, the temp folder,
and a re-queued identical prompt answered from the cache without a new file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from genserve.app.runtime import Runtime
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.runner import RunResult, WorkflowRunner

WORKFLOW_INFO = {"workflow": {"nodes": [{"id": 1, "type": "LoadImage"}], "links": [], "version": 0.4}}


@pytest.fixture
def resources(runtime: Runtime, data_root: Path) -> PipelineResources:
    return PipelineResources.from_runtime(runtime, input_dir=data_root / "inputs")


@pytest.fixture
def runner(runtime: Runtime, data_root: Path) -> WorkflowRunner:
    return WorkflowRunner(pipeline_registry(runtime.models.registry, data_root / "inputs"))


def save_prompt(class_type: str = "SaveImage", prefix: str = "meta/shot") -> dict[str, Any]:
    inputs: dict[str, Any] = {"images": ["1", 0]}
    if class_type != "PreviewImage":
        inputs["filename_prefix"] = prefix
    if class_type == "SaveImageAdvanced":  # its dynamic combo, as the frontend flattens it
        inputs.update({"format": "png", "format.bit_depth": "8-bit", "format.input_color_space": "sRGB"})
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
        "9": {"class_type": class_type, "inputs": inputs},
    }


def run(runner: WorkflowRunner, resources: PipelineResources, prompt: dict[str, Any]) -> RunResult:
    return runner.run(prompt, resources=resources, prompt=prompt, extra_pnginfo=WORKFLOW_INFO)


def saved_file(resources: PipelineResources, entry: dict[str, str]) -> Path:
    root = resources.temp_root() if entry["type"] == "temp" else resources.output_root()
    return root / entry["subfolder"] / entry["filename"]


def png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        image.load()
        return dict(image.text)  # type: ignore[attr-defined]


@pytest.mark.parametrize("class_type", ["SaveImage", "SaveImageAdvanced", "PreviewImage"])
def test_pngs_carry_the_prompt_and_workflow_chunks(
    class_type: str, runner: WorkflowRunner, resources: PipelineResources, data_root: Path
) -> None:
    prompt = save_prompt(class_type)
    result = run(runner, resources, prompt)
    [entry] = result.outputs["9"]["images"]
    path = saved_file(resources, entry)
    chunks = png_text(path)
    assert json.loads(chunks["prompt"]) == prompt
    assert json.loads(chunks["workflow"]) == WORKFLOW_INFO["workflow"]
    with Image.open(path) as saved, Image.open(data_root / "inputs/person.png") as source:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(source.convert("RGB")))
    if class_type == "PreviewImage":  # ComfyUI's temp folder and name, apart from the outputs
        assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
        assert path.parent == resources.temp_root()
    else:
        assert entry == {"filename": "shot_00001_.png", "subfolder": "meta", "type": "output"}
    if class_type == "SaveImageAdvanced":  # it passes its images on, as ComfyUI's does
        assert result.values["9"][0].shape == result.values["1"][0].shape


def test_without_extra_pnginfo_only_the_prompt_is_written(
    runner: WorkflowRunner, resources: PipelineResources
) -> None:
    prompt = save_prompt()
    result = runner.run(prompt, resources=resources)
    chunks = png_text(saved_file(resources, result.outputs["9"]["images"][0]))
    assert set(chunks) == {"prompt"} and json.loads(chunks["prompt"]) == prompt


def test_an_identical_prompt_writes_no_new_file(runner: WorkflowRunner, resources: PipelineResources) -> None:
    prompt = save_prompt()
    first = run(runner, resources, prompt)
    folder = resources.output_root() / "meta"
    before = sorted(p.name for p in folder.iterdir())
    again = run(runner, resources, prompt)
    assert again.executed == () and set(again.cached) == {"1", "9"}
    assert again.outputs == first.outputs
    assert sorted(p.name for p in folder.iterdir()) == before == ["shot_00001_.png"]


def test_a_changed_prompt_or_a_deleted_file_writes_again(
    runner: WorkflowRunner, resources: PipelineResources
) -> None:
    prompt = save_prompt()
    first = run(runner, resources, prompt)
    changed = save_prompt(prefix="meta/other")
    second = run(runner, resources, changed)
    assert second.executed == ("9",) and second.outputs["9"]["images"][0]["filename"] == "other_00001_.png"
    saved_file(resources, first.outputs["9"]["images"][0]).unlink()
    third = run(runner, resources, prompt)
    assert third.executed == ("9",) and "1" in third.cached  # only the save runs again
    assert saved_file(resources, third.outputs["9"]["images"][0]).is_file()


def test_a_confined_run_never_reuses_another_folders_file(
    runner: WorkflowRunner, resources: PipelineResources
) -> None:
    prompt = save_prompt()
    open_entry = run(runner, resources, prompt).outputs["9"]["images"][0]
    confined = dataclasses.replace(resources, confined="key1")
    mine = run(runner, confined, prompt)
    assert mine.executed == ("9",)
    assert mine.outputs["9"]["images"][0]["subfolder"] == "clients/key1/meta" != open_entry["subfolder"]
    # and back: the open run does not take the key's file either
    assert run(runner, resources, prompt).outputs["9"]["images"][0]["subfolder"] == "meta"


def test_a_run_whose_files_are_taken_away_writes_its_own(
    runner: WorkflowRunner, resources: PipelineResources
) -> None:
    """The workflow bridge deletes a job's files once collected: an identical job after it must
    get a file of its own, not the listing of one about to vanish."""
    prompt = save_prompt()
    first = run(runner, resources, prompt).outputs["9"]["images"][0]
    bridge_job = dataclasses.replace(resources, own_outputs=True)
    again = run(runner, bridge_job, prompt)
    assert again.executed == ("9",) and "1" in again.cached  # the load is reused, the save is not
    second = again.outputs["9"]["images"][0]
    assert second["filename"] != first["filename"] and saved_file(resources, second).is_file()
