"""Pixel filter node types: ImageInvert, ImageBlur, Canny.

ImageBlur is ComfyUI's Gaussian blur (a kernel sampled over [-1, 1], reflect padding); Canny uses
OpenCV with the thresholds ComfyUI's (kornia's) Canny means: gradient magnitudes of the grey
image in 0..1 with normalised Sobel kernels, after a 5x5 Gaussian of sigma 1, so the same
threshold widget values find the same edges.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from genserve.workflows.inputs import Float, Int, Linked
from genserve.workflows.nodes.base import NodeContext, NodeType

# OpenCV's Sobel on 0..255 pixels is 8 * 255 times kornia's normalised Sobel on 0..1 pixels.
CANNY_SCALE = 8 * 255.0


def _invert(ctx: NodeContext, image: torch.Tensor) -> tuple[torch.Tensor]:
    return (1.0 - image,)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """A ``size`` x ``size`` Gaussian sampled over [-1, 1] on both axes, summing to 1 (ComfyUI's)."""
    axis = torch.linspace(-1, 1, size)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    kernel = torch.exp(-(rows * rows + cols * cols) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def _blur(ctx: NodeContext, image: torch.Tensor, blur_radius: int, sigma: float) -> tuple[torch.Tensor]:
    if blur_radius == 0:
        return (image,)
    channels = image.shape[-1]
    size = blur_radius * 2 + 1
    kernel = gaussian_kernel(size, sigma).repeat(channels, 1, 1).unsqueeze(1)
    planar = image.float().movedim(-1, 1)
    pad = (blur_radius,) * 4
    if min(planar.shape[-2:]) <= blur_radius:  # reflect padding needs a wider image
        padded = torch.nn.functional.pad(planar, pad, mode="replicate")
    else:
        padded = torch.nn.functional.pad(planar, pad, mode="reflect")
    blurred = torch.nn.functional.conv2d(padded, kernel, groups=channels)
    return (blurred.movedim(1, -1),)


def _canny(
    ctx: NodeContext, image: torch.Tensor, low_threshold: float, high_threshold: float
) -> tuple[torch.Tensor]:
    edges = []
    for item in image[..., :3].float().clamp(0, 1).cpu().numpy():
        ctx.check_cancelled()
        grey = cv2.cvtColor((item * 255.0).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)
        smooth = cv2.GaussianBlur(grey, (5, 5), 1.0)
        found = cv2.Canny(smooth, low_threshold * CANNY_SCALE, high_threshold * CANNY_SCALE, L2gradient=True)
        edges.append(torch.from_numpy(found.astype(np.float32) / 255.0))
    return (torch.stack(edges).unsqueeze(-1).repeat(1, 1, 1, 3),)


def image_filter_node_types() -> list[NodeType]:
    return [
        NodeType(
            "ImageInvert",
            _invert,
            required={"image": Linked("IMAGE")},
            return_types=("IMAGE",),
            display_name="Invert Image",
            category="image",
        ),
        NodeType(
            "ImageBlur",
            _blur,
            required={
                "image": Linked("IMAGE"),
                "blur_radius": Int(1, min=1, max=31, step=1),
                "sigma": Float(1.0, min=0.1, max=10.0, step=0.1),
            },
            return_types=("IMAGE",),
            display_name="Image Blur",
            category="image/postprocessing",
        ),
        NodeType(
            "Canny",
            _canny,
            required={
                "image": Linked("IMAGE"),
                "low_threshold": Float(0.4, min=0.01, max=0.99, step=0.01),
                "high_threshold": Float(0.8, min=0.01, max=0.99, step=0.01),
            },
            return_types=("IMAGE",),
            category="image/preprocessors",
        ),
    ]
