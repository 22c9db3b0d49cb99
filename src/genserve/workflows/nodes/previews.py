"""Preview output node types: ImageCompare and MaskPreview.

Both write PNGs into the temp folder as PreviewImage does (the saving module's writer, so the
same naming, metadata and confinement apply) and report them in the ``executed`` message:
ImageCompare as ``a_images`` and ``b_images`` for the frontend's comparison slider.
"""

from __future__ import annotations

import random
import string

import torch

from genserve.workflows.inputs import InputSpec, Linked
from genserve.workflows.nodes.base import NodeContext, NodeResult, NodeType
from genserve.workflows.nodes.masks import mask_to_image
from genserve.workflows.nodes.saving import PREVIEW_COMPRESS_LEVEL, files_still_there, write_pngs


def _temp_prefix(stem: str) -> str:
    """ComfyUI's preview names: the stem, ``_temp_`` and five random letters."""
    return f"{stem}_temp_" + "".join(random.choices(string.ascii_lowercase, k=5))


def _previews(ctx: NodeContext, images: torch.Tensor | None, stem: str) -> list[dict[str, str]]:
    if images is None or images.shape[0] == 0:
        return []
    return write_pngs(ctx, images, _temp_prefix(stem), "temp", PREVIEW_COMPRESS_LEVEL)


def _image_compare(
    ctx: NodeContext,
    image_a: torch.Tensor | None = None,
    image_b: torch.Tensor | None = None,
    compare_view: object = None,
) -> NodeResult:
    a_images = _previews(ctx, image_a, "comfy.compare.a")
    b_images = _previews(ctx, image_b, "comfy.compare.b")
    return NodeResult((), ui={"a_images": a_images, "b_images": b_images})


def _mask_preview(ctx: NodeContext, mask: torch.Tensor) -> NodeResult:
    return NodeResult((), ui={"images": _previews(ctx, mask_to_image(mask), "ComfyUI")})


def _compare_still_there(result: NodeResult, resources: object) -> bool:
    """The cached previews may stand only while every file of both sides is still there."""
    ui = result.ui or {}
    both = NodeResult((), ui={"images": [*ui.get("a_images", []), *ui.get("b_images", [])]})
    return files_still_there(both, resources)


def preview_node_types() -> list[NodeType]:
    return [
        NodeType(
            "ImageCompare",
            _image_compare,
            optional={
                "image_a": Linked("IMAGE"),
                "image_b": Linked("IMAGE"),
                "compare_view": InputSpec("IMAGECOMPARE"),
            },
            display_name="Image Compare",
            description="Compares two images side by side with a slider.",
            category="image",
            output_node=True,
            reusable=_compare_still_there,
        ),
        NodeType(
            "MaskPreview",
            _mask_preview,
            required={"mask": Linked("MASK")},
            display_name="Preview Mask",
            category="mask",
            output_node=True,
            reusable=files_still_there,
        ),
    ]
