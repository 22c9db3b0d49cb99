"""CameraAngle: the prompt text ComfyUI writes for an angle set (sector, elevation band and
distance band, each edge on the side ComfyUI puts it), the camera it places on the orbit, its
widgets' ranges, and the official multi-angle template's node converted and run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from genserve.workflows.graph import GraphValidationError
from genserve.workflows.nodes.builtin import pipeline_registry
from genserve.workflows.runner import WorkflowRunner
from genserve.workflows.ui_format import registry_object_info, ui_to_api


@pytest.fixture(scope="module")
def runner() -> WorkflowRunner:
    return WorkflowRunner(pipeline_registry(), cache_size=0)


def camera(
    runner: WorkflowRunner, horizontal: Any, vertical: Any, zoom: Any, **more: Any
) -> tuple[dict[str, Any], str]:
    inputs = {"horizontal_angle": horizontal, "vertical_angle": vertical, "zoom": zoom, **more}
    prompt = {
        "1": {"class_type": "CameraAngle", "inputs": inputs},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }
    result = runner.run(prompt, resources=None)
    info, text = result.values["1"]
    assert result.outputs["9"] == {"text": [text]}
    return info, text


@pytest.mark.parametrize(
    ("horizontal", "vertical", "zoom", "expected"),
    [
        (0, 0, 5.0, "front view eye-level shot medium shot"),
        (333, 17, 5, "front-left quarter view elevated shot medium shot"),  # the template's values
        (22, -15, 2.0, "front view eye-level shot medium shot"),
        (23, -16, 1.9, "front-right quarter view low-angle shot wide shot"),
        (90, 15, 5.9, "right side view elevated shot medium shot"),
        (135, 44, 0.0, "back-right quarter view elevated shot wide shot"),
        (180, 45, 6.0, "back view high-angle shot close-up"),
        (225, -30, 10.0, "back-left quarter view low-angle shot close-up"),
        (270, 60, 9.9, "left side view high-angle shot close-up"),
        (337, 0, 5, "front-left quarter view eye-level shot medium shot"),
        (338, 0, 5, "front view eye-level shot medium shot"),
        (360, 0, 5, "front view eye-level shot medium shot"),
    ],
)
def test_the_prompt_is_comfyuis_words_for_the_angles(
    runner: WorkflowRunner, horizontal: int, vertical: int, zoom: float, expected: str
) -> None:
    assert camera(runner, horizontal, vertical, zoom)[1] == expected


def test_the_camera_orbits_the_cube_nearer_as_zoom_grows(runner: WorkflowRunner) -> None:
    front, _ = camera(runner, 0, 0, 0.0)
    assert front == {
        "position": {"x": 0.0, "y": 0.5, "z": 6.0},
        "target": {"x": 0.0, "y": 0.5, "z": 0.0},
        "zoom": 1.0,
        "cameraType": "perspective",
        "fov": 35.0,
    }
    side, _ = camera(runner, 90, 30, 10.0)  # 3.2 away, 30 degrees up, on the +x side
    assert side["position"]["x"] == pytest.approx(3.2 * math.cos(math.radians(30)))
    assert side["position"]["y"] == pytest.approx(0.5 + 1.6)
    assert side["position"]["z"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("horizontal_angle", 361, "value_bigger_than_max"),
        ("vertical_angle", -31, "value_smaller_than_min"),
        ("zoom", 10.5, "value_bigger_than_max"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_widget(
    runner: WorkflowRunner, name: str, value: float, kind: str
) -> None:
    angles: dict[str, Any] = {"horizontal": 0, "vertical": 0, "zoom": 5.0}
    angles[name.removesuffix("_angle")] = value
    with pytest.raises(GraphValidationError) as info:
        camera(runner, angles["horizontal"], angles["vertical"], angles["zoom"])
    [problem] = info.value.problems
    assert (problem.input_name, problem.kind) == (name, kind)


def test_object_info_has_comfyuis_widgets_and_outputs(runner: WorkflowRunner) -> None:
    node = runner.registry.object_info("CameraAngle")["CameraAngle"]
    assert node["input_order"] == {
        "required": ["horizontal_angle", "vertical_angle", "zoom"],
        "optional": ["image", "view"],
    }
    assert node["input"]["optional"]["view"] == [
        "STRING",
        {"default": "", "socketless": True, "widgetType": "CAMERA_ANGLE_VIEW"},
    ]
    assert node["output"] == ["LOAD3D_CAMERA", "STRING"]
    assert node["output_name"] == ["camera_info", "prompt"]


def test_the_official_multiangle_templates_node_converts_and_runs(runner: WorkflowRunner) -> None:
    templates = pytest.importorskip("comfyui_workflow_templates_json")
    path = Path(templates.__file__).parent / "templates" / "template_qwen_multiangle.app.json"
    flow = json.loads(path.read_text(encoding="utf-8"))
    [saved] = [n for n in flow["nodes"] if n.get("type") == "CameraAngle"]
    saved = {**saved, "inputs": []}  # its image comes from a LoadImage this test leaves out
    api = ui_to_api({**flow, "nodes": [saved], "links": []}, registry_object_info(runner.registry))
    inputs = api[str(saved["id"])]["inputs"]
    assert inputs == {"horizontal_angle": 333, "vertical_angle": 17, "zoom": 5, "view": "camera"}
    horizontal, vertical, zoom, view = inputs.values()
    assert camera(runner, horizontal, vertical, zoom, view=view)[1] == (
        "front-left quarter view elevated shot medium shot"
    )
