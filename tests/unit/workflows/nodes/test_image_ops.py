"""Image geometry and filter node types: the sizes ComfyUI's arithmetic gives, the pixels the
filters give, and the preview output nodes' files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from genserve.workflows.nodes.builtin import PipelineResources
from genserve.workflows.nodes.image_filters import gaussian_kernel
from tests.unit.workflows.nodes.conftest import NodeCall


def size(pixels: torch.Tensor) -> tuple[int, int]:
    return int(pixels.shape[2]), int(pixels.shape[1])


@pytest.mark.parametrize("method", ["area", "lanczos", "bilinear", "nearest-exact", "bicubic"])
def test_scale_to_max_dimension_keeps_the_aspect_ratio(run_pure: NodeCall, method: str) -> None:
    [scaled] = run_pure(
        "ImageScaleToMaxDimension", image=torch.rand(1, 60, 90, 3), upscale_method=method, largest_size=45
    )
    assert size(scaled) == (45, 30)
    if method != "bicubic":  # bicubic overshoots, in ComfyUI too
        assert float(scaled.min()) >= 0 and float(scaled.max()) <= 1.0001


@pytest.mark.parametrize(
    ("resize_type", "options", "expected"),
    [
        ("scale dimensions", {"resize_type.width": 40, "resize_type.height": 0}, (40, 20)),
        ("scale by multiplier", {"resize_type.multiplier": 0.5}, (40, 20)),
        ("scale longer dimension", {"resize_type.longer_size": 20}, (20, 10)),
        ("scale shorter dimension", {"resize_type.shorter_size": 20}, (40, 20)),
        ("scale total pixels", {"resize_type.megapixels": 0.01}, (145, 72)),
        ("scale to multiple", {"resize_type.multiple": 16}, (80, 32)),
        ("scale dimensions", {"resize_type.width": 30, "resize_type.height": 30}, (30, 30)),
    ],
)
def test_resize_image_mask_modes(
    run_pure: NodeCall, resize_type: str, options: dict, expected: tuple[int, int]
) -> None:
    image = torch.rand(1, 40, 80, 3)
    [resized] = run_pure(
        "ResizeImageMaskNode", input=image, resize_type=resize_type, scale_method="area", **options
    )
    assert size(resized) == expected and resized.shape[-1] == 3
    [mask] = run_pure(
        "ResizeImageMaskNode",
        input=image[..., 0],
        resize_type=resize_type,
        scale_method="bilinear",
        **options,
    )
    assert mask.dim() == 3 and size(mask) == expected


def test_get_image_size_and_resolution_selector(run_pure: NodeCall) -> None:
    assert run_pure("GetImageSize", image=torch.rand(3, 20, 30, 3)) == (30, 20, 3)
    assert run_pure("ResolutionSelector", aspect_ratio="1:1 (Square)", megapixels=1.0, multiple=8) == (
        1024,
        1024,
    )
    assert run_pure("ResolutionSelector", aspect_ratio="16:9 (Widescreen)", megapixels=1.0) == (1368, 768)
    # Below the minimum side: the smallest multiple of the ratio that reaches it.
    width, height = run_pure("ResolutionSelector", aspect_ratio="4:3 (Standard)", megapixels=0.1, minimum=512)
    assert width * 3 == height * 4 and height >= 512 and width % 8 == 0 == height % 8


def test_batch_images_orders_and_resizes_to_the_first(run_pure: NodeCall) -> None:
    first, second = torch.zeros(1, 8, 8, 3), torch.ones(2, 4, 6, 3)
    [batch] = run_pure("BatchImagesNode", **{"images.image1": second, "images.image0": first})
    assert batch.shape == (3, 8, 8, 3) and batch[0].eq(0).all() and batch[1:].eq(1).all()


def test_pad_for_outpaint_adds_grey_borders_and_a_feathered_mask(run_pure: NodeCall) -> None:
    image = torch.zeros(1, 20, 20, 3)
    padded, mask = run_pure(
        "ImagePadForOutpaint", image=image, left=8, top=0, right=0, bottom=4, feathering=4
    )
    assert padded.shape == (1, 24, 28, 3) and mask.shape == (1, 24, 28)
    assert padded[0, 0, 0].eq(0.5).all() and padded[0, 10, 15].eq(0).all()
    assert mask[0, :, :8].eq(1).all() and mask[0, 20:].eq(1).all()  # the new borders
    assert mask[0, 5, 8] == 1.0 and 0 < mask[0, 5, 10] < 1 and mask[0, 5, 15] == 0  # fades in


def test_invert_blur_and_canny(run_pure: NodeCall) -> None:
    image = torch.zeros(1, 32, 32, 3)
    image[:, :, 16:] = 1.0
    [inverted] = run_pure("ImageInvert", image=image)
    assert torch.equal(inverted, 1 - image)
    [blurred] = run_pure("ImageBlur", image=image, blur_radius=3, sigma=1.0)
    assert blurred.shape == image.shape and 0 < float(blurred[0, 5, 15, 0]) < 1
    assert torch.allclose(blurred[:, :, :10], image[:, :, :10]) and gaussian_kernel(
        7, 1.0
    ).sum() == pytest.approx(1)
    [edges] = run_pure("Canny", image=image, low_threshold=0.1, high_threshold=0.2)
    assert edges.shape == (1, 32, 32, 3) and set(edges.unique().tolist()) == {0.0, 1.0}
    columns = edges[0, 10, :, 0].nonzero().flatten().tolist()
    assert columns and all(14 <= c <= 17 for c in columns)  # the one vertical edge


def test_previews_write_temp_pngs(
    run_node: NodeCall, pipeline_nodes, node_resources: PipelineResources
) -> None:
    from genserve.workflows.nodes.base import NodeContext

    ctx = NodeContext("prompt", "9", "ImageCompare", resources=node_resources)
    result = pipeline_nodes["ImageCompare"].call(
        ctx, {"image_a": torch.rand(2, 8, 8, 3), "image_b": torch.rand(1, 8, 8, 3)}
    )
    assert [len(result.ui["a_images"]), len(result.ui["b_images"])] == [2, 1]
    entry = result.ui["a_images"][0]
    assert entry["type"] == "temp" and entry["filename"].startswith("comfy.compare.a_temp_")
    path = Path(node_resources.temp_root()) / entry["subfolder"] / entry["filename"]
    with Image.open(path) as saved:
        assert saved.size == (8, 8)
    preview = pipeline_nodes["MaskPreview"].call(ctx, {"mask": torch.ones(1, 6, 4)})
    [mask_entry] = preview.ui["images"]
    with Image.open(
        Path(node_resources.temp_root()) / mask_entry["subfolder"] / mask_entry["filename"]
    ) as saved:
        assert saved.size == (4, 6) and saved.convert("L").getpixel((0, 0)) == 255
    assert pipeline_nodes["ImageCompare"].call(ctx, {}).ui == {"a_images": [], "b_images": []}
