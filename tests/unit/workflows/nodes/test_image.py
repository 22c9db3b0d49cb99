"""Image node types beyond the demo workflows: FluxKontextImageScale picks ComfyUI's Kontext size,
and LoadImage offers the upload button (``image_upload``) in ComfyUI's object_info."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from genserve.app.runtime import Runtime
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.nodes.image import KONTEXT_SIZES
from genserve.workflows.runner import WorkflowRunner


def test_flux_kontext_image_scale_takes_the_nearest_aspect(runtime: Runtime, data_root: Path) -> None:
    runner = WorkflowRunner(pipeline_registry(runtime.models.registry, data_root / "inputs"))
    resources = PipelineResources.from_runtime(runtime, input_dir=data_root / "inputs")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
        "2": {"class_type": "FluxKontextImageScale", "inputs": {"image": ["1", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    result = runner.run(prompt, resources=resources)
    with Image.open(data_root / "inputs/person.png") as person:
        ratio = person.width / person.height
    scaled = result.values["2"][0]
    height, width = scaled.shape[1:3]
    assert (width, height) in KONTEXT_SIZES
    assert all(abs(width / height - ratio) <= abs(w / h - ratio) for w, h in KONTEXT_SIZES)
    assert float(scaled.min()) >= 0 and float(scaled.max()) <= 1 and np.ptp(scaled.numpy()) > 0


def test_load_image_object_info_has_the_upload_option(runtime: Runtime, data_root: Path) -> None:
    info = pipeline_registry(runtime.models.registry, data_root / "inputs").object_info("LoadImage")
    choices, options = info["LoadImage"]["input"]["required"]["image"]
    assert "person.png" in choices and options["image_upload"] is True
