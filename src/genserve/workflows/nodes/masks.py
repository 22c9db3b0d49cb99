"""Mask node types: ImageToMask, MaskToImage, GrowMask, ImageCompositeMasked.

A MASK is ``[B, H, W]`` float in 0..1, as ComfyUI's; these follow ComfyUI's nodes_mask.py.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.inputs import Boolean, Combo, Int, Linked
from genserve.workflows.nodes.base import NodeContext, NodeType

MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION
CHANNELS = ("red", "green", "blue", "alpha")


def _image_to_mask(ctx: NodeContext, image: torch.Tensor, channel: str) -> tuple[torch.Tensor]:
    index = CHANNELS.index(channel)
    if index >= image.shape[-1]:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"channel: the image has no {channel} channel", field="channel"
        )
    return (image[:, :, :, index].clone(),)


def mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    """MASK -> grey IMAGE ``[B, H, W, 3]``."""
    return mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).movedim(1, -1).expand(-1, -1, -1, 3)


def _mask_to_image(ctx: NodeContext, mask: torch.Tensor) -> tuple[torch.Tensor]:
    return (mask_to_image(mask).contiguous(),)


def _grow_mask(
    ctx: NodeContext, mask: torch.Tensor, expand: int, tapered_corners: bool
) -> tuple[torch.Tensor]:
    """Grey dilation (erosion for a negative ``expand``) by one pixel per step, ``expand`` times;
    tapered corners use a cross, otherwise a square."""
    corner = 0 if tapered_corners else 1
    footprint = np.array([[corner, 1, corner], [1, 1, 1], [corner, 1, corner]], dtype=bool)
    step = scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation
    grown = []
    for item in mask.reshape(-1, mask.shape[-2], mask.shape[-1]):
        array = item.float().cpu().numpy()
        for _ in range(abs(expand)):
            ctx.check_cancelled()
            array = step(array, footprint=footprint)
        grown.append(torch.from_numpy(array))
    return (torch.stack(grown),)


def _composite_masked(
    ctx: NodeContext,
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    resize_source: bool,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor]:
    """``source`` pasted onto ``destination`` with its top-left corner at (x, y), blended by
    ``mask`` (stretched to the source's size), clipped to the destination."""
    channels = max(destination.shape[-1], source.shape[-1])  # ComfyUI adds an opaque alpha if needed
    dest = torch.nn.functional.pad(destination, (0, channels - destination.shape[-1]), value=1.0)
    src = torch.nn.functional.pad(source, (0, channels - source.shape[-1]), value=1.0)
    dest, src = dest.clone().movedim(-1, 1), src.movedim(-1, 1)
    if resize_source:
        src = torch.nn.functional.interpolate(src, size=dest.shape[-2:], mode="bilinear")
    src = _to_batch(src, dest.shape[0])
    x = max(-src.shape[-1], min(x, dest.shape[-1]))
    y = max(-src.shape[-2], min(y, dest.shape[-2]))
    left, top = x, y
    right, bottom = left + src.shape[-1], top + src.shape[-2]
    if mask is None:
        weight = torch.ones_like(src)
    else:
        weight = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        weight = torch.nn.functional.interpolate(weight, size=src.shape[-2:], mode="bilinear")
        weight = _to_batch(weight, src.shape[0])
    visible_w = dest.shape[-1] - left + min(0, x)
    visible_h = dest.shape[-2] - top + min(0, y)
    weight = weight[:, :, :visible_h, :visible_w]
    region = dest[..., top:bottom, left:right]
    dest[..., top:bottom, left:right] = weight * src[..., :visible_h, :visible_w] + (1 - weight) * region
    return (dest.movedim(1, -1),)


def _to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat (or cut) along the batch axis to ``batch`` items, as ComfyUI's repeat_to_batch_size."""
    if tensor.shape[0] > batch:
        return tensor[:batch]
    if tensor.shape[0] < batch:
        repeats = -(-batch // tensor.shape[0])
        return tensor.repeat(repeats, *([1] * (tensor.dim() - 1)))[:batch]
    return tensor


def mask_node_types() -> list[NodeType]:
    position = Int(0, min=0, max=MAX_RESOLUTION, step=1)
    return [
        NodeType(
            "ImageToMask",
            _image_to_mask,
            required={"image": Linked("IMAGE"), "channel": Combo(CHANNELS, default="red")},
            return_types=("MASK",),
            display_name="Convert Image to Mask",
            category="mask",
        ),
        NodeType(
            "MaskToImage",
            _mask_to_image,
            required={"mask": Linked("MASK")},
            return_types=("IMAGE",),
            display_name="Convert Mask to Image",
            category="mask",
        ),
        NodeType(
            "GrowMask",
            _grow_mask,
            required={
                "mask": Linked("MASK"),
                "expand": Int(0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
                "tapered_corners": Boolean(True),
            },
            return_types=("MASK",),
            category="mask",
        ),
        NodeType(
            "ImageCompositeMasked",
            _composite_masked,
            required={
                "destination": Linked("IMAGE"),
                "source": Linked("IMAGE"),
                "x": position,
                "y": position,
                "resize_source": Boolean(False),
            },
            optional={"mask": Linked("MASK")},
            return_types=("IMAGE",),
            category="image",
        ),
    ]
