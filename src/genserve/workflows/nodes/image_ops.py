"""Image geometry node types: ImageScaleToMaxDimension, ResizeImageMaskNode, GetImageSize,
ResolutionSelector, BatchImagesNode, ImagePadForOutpaint.

Resampling follows ComfyUI's ``common_upscale``: torch interpolation for nearest-exact, bilinear,
area and bicubic on the float tensor, Pillow's Lanczos on 8-bit pixels, so the same method gives
the same pixels as in ComfyUI. Every function takes IMAGE ``[B, H, W, C]`` or MASK ``[B, H, W]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from genserve.errors import ErrorCode, GenserveError
from genserve.services.pipeline.imaging import center_crop
from genserve.workflows.inputs import Combo, ComboOption, DynamicCombo, Float, InputSpec, Int, Linked
from genserve.workflows.nodes.base import NodeContext, NodeType

MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION
SCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
MAX_DIMENSION_METHODS = ("area", "lanczos", "bilinear", "nearest-exact", "bicubic")
ASPECT_RATIOS = {
    "1:1 (Square)": (1, 1),
    "3:2 (Photo)": (3, 2),
    "4:3 (Standard)": (4, 3),
    "16:9 (Widescreen)": (16, 9),
    "21:9 (Ultrawide)": (21, 9),
    "2:3 (Portrait Photo)": (2, 3),
    "3:4 (Portrait Standard)": (3, 4),
    "9:16 (Portrait Widescreen)": (9, 16),
}
BATCH_INPUTS = 50  # BatchImagesNode's autogrow inputs images.image0 .. images.image49


def _size(pixels: torch.Tensor) -> tuple[int, int]:
    """(width, height) of an IMAGE ``[B, H, W, C]`` or a MASK ``[B, H, W]`` alike."""
    return int(pixels.shape[2]), int(pixels.shape[1])


def scale(pixels: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """An IMAGE or MASK resized to ``width`` x ``height``; ``crop="center"`` first cuts the source to
    the target's aspect ratio, as ComfyUI does."""
    if width <= 0 or height <= 0 or width > MAX_RESOLUTION or height > MAX_RESOLUTION:
        raise GenserveError(ErrorCode.INVALID_INPUT, f"cannot resize to {width}x{height}")
    is_image = pixels.dim() == 4
    batch = pixels.movedim(-1, 1) if is_image else pixels.unsqueeze(1)
    if crop == "center":
        batch = center_crop(batch, width, height)
    if method == "lanczos":
        resized = _lanczos(batch, width, height)
    else:
        resized = torch.nn.functional.interpolate(batch.float(), size=(height, width), mode=method)
    return resized.movedim(1, -1) if is_image else resized.squeeze(1)


def _lanczos(batch: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's Lanczos: through 8-bit Pillow images, channel by channel."""
    out = []
    for item in batch:
        channels = []
        for channel in item:
            array = np.clip(channel.float().cpu().numpy() * 255.0, 0, 255).astype(np.uint8)
            image = Image.fromarray(array, "L").resize((width, height), Image.Resampling.LANCZOS)
            channels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
        out.append(torch.stack(channels))
    return torch.stack(out)


def _scale_to_max_dimension(
    ctx: NodeContext, image: torch.Tensor, upscale_method: str, largest_size: int
) -> tuple[torch.Tensor]:
    width, height = _size(image)
    if height > width:
        width, height = round(width / height * largest_size), largest_size
    elif width > height:
        width, height = largest_size, round(height / width * largest_size)
    else:
        width = height = largest_size
    return (scale(image, width, height, upscale_method),)


def _resize_target(pixels: torch.Tensor, resize_type: str, options: dict[str, Any]) -> tuple[int, int, str]:
    """(width, height, crop) for one of ResizeImageMaskNode's modes."""
    width, height = _size(pixels)
    if resize_type == "scale by multiplier":
        return round(width * options["multiplier"]), round(height * options["multiplier"]), "disabled"
    if resize_type in ("scale dimensions", "scale width", "scale height"):
        new_w = options["width"] if resize_type != "scale height" else 0
        new_h = options["height"] if resize_type != "scale width" else 0
        if new_w == 0 and new_h == 0:
            return width, height, "disabled"
        if new_w == 0:
            new_w = max(1, round(width * new_h / height))
        elif new_h == 0:
            new_h = max(1, round(height * new_w / width))
        crop = options["crop"] if resize_type == "scale dimensions" else "disabled"
        return new_w, new_h, crop
    if resize_type in ("scale longer dimension", "scale shorter dimension"):
        longer = resize_type == "scale longer dimension"
        side = options["longer_size"] if longer else options["shorter_size"]
        if (height > width) == longer and height != width:
            return round(width / height * side), side, "disabled"
        if height != width:
            return side, round(height / width * side), "disabled"
        return side, side, "disabled"
    if resize_type == "scale total pixels":
        factor = math.sqrt(int(options["megapixels"] * 1024 * 1024) / (width * height))
        return round(width * factor), round(height * factor), "disabled"
    if resize_type == "match size":
        match = options.get("match")
        if not isinstance(match, torch.Tensor):
            raise GenserveError(
                ErrorCode.INVALID_INPUT, "resize_type.match: link an image or mask", field="resize_type.match"
            )
        return *_size(match), options["crop"]
    raise GenserveError(ErrorCode.INVALID_INPUT, f"resize_type: unknown {resize_type!r}", field="resize_type")


def _to_multiple(pixels: torch.Tensor, multiple: int, method: str) -> torch.Tensor:
    """Cover-scale to the nearest smaller multiple on each side, then centre-crop, as ComfyUI."""
    width, height = _size(pixels)
    target_w, target_h = width // multiple * multiple, height // multiple * multiple
    if multiple <= 1 or 0 in (target_w, target_h) or (target_w, target_h) == (width, height):
        return pixels
    if target_w / width >= target_h / height:
        scaled_w, scaled_h = target_w, max(target_h, math.ceil(height * target_w / width))
    else:
        scaled_w, scaled_h = max(target_w, math.ceil(width * target_h / height)), target_h
    resized = scale(pixels, scaled_w, scaled_h, method)
    x0, y0 = (scaled_w - target_w) // 2, (scaled_h - target_h) // 2
    return resized[:, y0 : y0 + target_h, x0 : x0 + target_w]


def _resize_image_mask(
    ctx: NodeContext, input: torch.Tensor, resize_type: str, scale_method: str, **options: Any
) -> tuple[torch.Tensor]:
    given = {key.removeprefix("resize_type."): value for key, value in options.items()}
    defaults = {"width": 512, "height": 512, "crop": "center", "multiplier": 1.0, "longer_size": 512}
    defaults.update({"shorter_size": 512, "megapixels": 1.0, "multiple": 8})
    settings = {**defaults, **given}
    if resize_type == "scale to multiple":
        return (_to_multiple(input, int(settings["multiple"]), scale_method),)
    width, height, crop = _resize_target(input, resize_type, settings)
    if (width, height) == _size(input) and crop == "disabled":
        return (input,)
    return (scale(input, width, height, scale_method, crop),)


def _get_image_size(ctx: NodeContext, image: torch.Tensor) -> tuple[int, int, int]:
    width, height = _size(image)
    return (width, height, int(image.shape[0]))


def _resolution_selector(
    ctx: NodeContext, aspect_ratio: str, megapixels: float, multiple: int = 8, minimum: int = 256
) -> tuple[int, int]:
    w_ratio, h_ratio = ASPECT_RATIOS[aspect_ratio]
    factor = math.sqrt(megapixels * 1024 * 1024 / (w_ratio * h_ratio))
    width = round(w_ratio * factor / multiple) * multiple
    height = round(h_ratio * factor / multiple) * multiple
    if width < minimum or height < minimum:  # the smallest multiple of the ratio that fits both
        step_w, step_h = multiple // math.gcd(w_ratio, multiple), multiple // math.gcd(h_ratio, multiple)
        step = step_w * step_h // math.gcd(step_w, step_h)
        k = math.ceil(math.ceil(max(minimum / w_ratio, minimum / h_ratio)) / step) * step
        width, height = w_ratio * k, h_ratio * k
    return (width, height)


def _batch_images(ctx: NodeContext, **images: torch.Tensor) -> tuple[torch.Tensor]:
    """The linked inputs in index order, resized to the first one's size (bilinear, centre crop)."""
    ordered = [images[key] for key in sorted(images, key=lambda k: int(k.rsplit("image", 1)[1]))]
    if not ordered:
        raise GenserveError(ErrorCode.INVALID_INPUT, "images: link at least one image", field="images")
    channels = max(image.shape[-1] for image in ordered)
    padded = [torch.nn.functional.pad(image, (0, channels - image.shape[-1]), value=1.0) for image in ordered]
    width, height = _size(padded[0])
    same = [
        img if _size(img) == (width, height) else scale(img, width, height, "bilinear", "center")
        for img in padded
    ]
    return (torch.cat(same, dim=0),)


def _pad_for_outpaint(
    ctx: NodeContext, image: torch.Tensor, left: int, top: int, right: int, bottom: int, feathering: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey borders, and a mask of 1 over them fading (quadratically) into the image over
    ``feathering`` pixels along the padded sides."""
    batch, height, width, channels = image.shape
    padded = torch.full((batch, height + top + bottom, width + left + right, channels), 0.5)
    padded[:, top : top + height, left : left + width, :] = image
    mask = torch.ones((height + top + bottom, width + left + right))
    inner = torch.zeros((height, width))
    if feathering > 0 and feathering * 2 < height and feathering * 2 < width:
        rows = torch.arange(height, dtype=torch.float32).unsqueeze(1).expand(height, width)
        cols = torch.arange(width, dtype=torch.float32).unsqueeze(0).expand(height, width)
        far = torch.full((height, width), float(max(height, width)))
        distance = torch.stack(
            [
                rows if top else far,
                height - rows if bottom else far,
                cols if left else far,
                width - cols if right else far,
            ]
        ).amin(dim=0)
        fade = ((feathering - distance) / feathering).clamp(min=0.0)
        inner = torch.where(distance < feathering, fade * fade, inner)
    mask[top : top + height, left : left + width] = inner
    return (padded, mask.unsqueeze(0))


def _resize_type() -> InputSpec:
    """ResizeImageMaskNode's ``resize_type``: ComfyUI's V3 dynamic combo, each mode with its own
    inputs (sent as ``resize_type.<input>``, saved in a UI workflow right after the mode)."""
    side = Int(512, min=0, max=MAX_RESOLUTION, step=1)
    crop = Combo(("disabled", "center"), default="center")
    modes = (
        ComboOption("scale dimensions", required=(("width", side), ("height", side), ("crop", crop))),
        ComboOption(
            "scale by multiplier", required=(("multiplier", Float(1.0, min=0.01, max=8.0, step=0.01)),)
        ),
        ComboOption("scale longer dimension", required=(("longer_size", side),)),
        ComboOption("scale shorter dimension", required=(("shorter_size", side),)),
        ComboOption("scale width", required=(("width", side),)),
        ComboOption("scale height", required=(("height", side),)),
        ComboOption(
            "scale total pixels", required=(("megapixels", Float(1.0, min=0.01, max=16.0, step=0.01)),)
        ),
        ComboOption("match size", required=(("match", Linked("IMAGE,MASK")), ("crop", crop))),
        ComboOption("scale to multiple", required=(("multiple", Int(8, min=1, max=MAX_RESOLUTION, step=1)),)),
    )
    return DynamicCombo(modes)


def image_ops_node_types() -> list[NodeType]:
    side = Int(0, min=0, max=MAX_RESOLUTION, step=8)
    return [
        NodeType(
            "ImageScaleToMaxDimension",
            _scale_to_max_dimension,
            required={
                "image": Linked("IMAGE"),
                "upscale_method": Combo(MAX_DIMENSION_METHODS, default="area"),
                "largest_size": Int(512, min=0, max=MAX_RESOLUTION, step=1),
            },
            return_types=("IMAGE",),
            category="image/upscaling",
        ),
        NodeType(
            "ResizeImageMaskNode",
            _resize_image_mask,
            required={
                "input": Linked("IMAGE,MASK"),
                "resize_type": _resize_type(),
                "scale_method": Combo(SCALE_METHODS, default="area"),
            },
            return_types=("IMAGE,MASK",),
            return_names=("resized",),
            display_name="Resize Image/Mask",
            category="transform",
            description="Resize an image or mask using various scaling methods.",
        ),
        NodeType(
            "GetImageSize",
            _get_image_size,
            required={"image": Linked("IMAGE")},
            return_types=("INT", "INT", "INT"),
            return_names=("width", "height", "batch_size"),
            category="image",
            description="Returns width and height of the image, and passes it through unchanged.",
        ),
        NodeType(
            "ResolutionSelector",
            _resolution_selector,
            required={
                "aspect_ratio": Combo(tuple(ASPECT_RATIOS), default="1:1 (Square)"),
                "megapixels": Float(1.0, min=0.1, max=16.0, step=0.1),
            },
            optional={
                "multiple": Int(8, min=8, max=128, step=4),
                "minimum": Int(256, min=32, max=4096, step=32),
            },
            return_types=("INT", "INT"),
            return_names=("width", "height"),
            display_name="Resolution Selector",
            category="utils",
        ),
        NodeType(
            "BatchImagesNode",
            _batch_images,
            optional={f"images.image{i}": Linked("IMAGE") for i in range(BATCH_INPUTS)},
            return_types=("IMAGE",),
            display_name="Batch Images",
            category="image",
        ),
        NodeType(
            "ImagePadForOutpaint",
            _pad_for_outpaint,
            required={
                "image": Linked("IMAGE"),
                "left": side,
                "top": side,
                "right": side,
                "bottom": side,
                "feathering": Int(40, min=0, max=MAX_RESOLUTION, step=1),
            },
            return_types=("IMAGE", "MASK"),
            display_name="Pad Image for Outpainting",
            category="image",
        ),
    ]
