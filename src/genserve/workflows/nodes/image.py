"""Image node types: LoadImage, ImageScaleToTotalPixels, FluxKontextImageScale, VAEEncode, VAEDecode.

They reuse the services' own image code (``imaging``, ``latent_encoder``, ``decoding``), so a
workflow and the split services resize, encode and decode the same pixels the same way; an
IMAGE goes back to 8-bit PIL exactly, because every IMAGE here came from 8-bit pixels.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind
from genserve.services.pipeline.decoding import decode_latent
from genserve.services.pipeline.imaging import dimensions_for_area, resize, vae_encode
from genserve.storage.images import reading_image
from genserve.storage.paths import Sandbox, check_name, check_path, shown
from genserve.workflows.inputs import Combo, Float, InputSpec, Int, Linked, String, with_options
from genserve.workflows.nodes.base import NodeContext, NodeType
from genserve.workflows.nodes.values import (
    VaeRef,
    image_to_tensor,
    latent_samples,
    resources_of,
    tensor_to_images,
)
from genserve.workflows.owners import CLIENTS, reachable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
UPSCALE_METHODS = {"nearest-exact": "nearest", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic"}
UPSCALE_METHODS["lanczos"] = "lanczos"
LATENT_PIXELS = 8  # the VAE's 8x compression (an odd latent side is padded to the 2x2 patches when sampling)
# ComfyUI's megapixel is 1024 * 1024 pixels (genserve's services count 1,000,000): a workflow's
# ``megapixels`` means what it means in ComfyUI.
COMFY_MEGAPIXEL = 1024 * 1024


# The workflow bridge's uploads (POST /upload), a subfolder of the input folder. They belong to
# the bridge's clients: LoadImage accepts them by name but never lists them (ComfyUI's
# /object_info, a refused value's message), so one client cannot learn another's file names.
BRIDGE_UPLOADS = "bridge-uploads"


class InputImages:
    """LoadImage's choices: image files under the input folder (subfolders as ``sub/name``), read
    fresh at every use, without the bridge's uploads; ``accepts`` lets those through by name."""

    where = "the input folder"  # what a refused value is said to be missing from, instead of a list

    def __init__(self, input_dir: Path) -> None:
        self.input_dir = input_dir

    def __call__(self) -> list[str]:
        if not self.input_dir.is_dir():
            return []
        found = [
            p.relative_to(self.input_dir).as_posix()
            for p in self.input_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        ]
        hidden = (BRIDGE_UPLOADS + "/", CLIENTS + "/")
        return sorted(name for name in found if not name.startswith(hidden))

    def accepts(self, value: str) -> bool:
        """Whether ``value`` names an existing bridge upload (``bridge-uploads/<plain name>``), or
        any image path in a key's own folder (``clients/<key id>/...``: whose it is, and whether
        it exists, is the run's to say, so a refusal here tells nobody about another key's files)."""
        if value.startswith(CLIENTS + "/") and value.count("/") >= 2:
            try:
                check_path(value, "image")
            except GenserveError:
                return False
            return Path(value).suffix.lower() in IMAGE_SUFFIXES
        folder, sep, name = value.partition("/")
        if folder != BRIDGE_UPLOADS or not sep or not name or "/" in name or "\\" in name:
            return False
        try:
            check_name(name, "image")
        except GenserveError:  # too long, NUL, unencodable: no such file can exist
            return False
        if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            return False
        return (self.input_dir / BRIDGE_UPLOADS / name).is_file()


def input_images(input_dir: Path) -> InputImages:
    """Choices for LoadImage: image files under the input folder, the bridge's uploads accepted
    but not listed."""
    return InputImages(input_dir)


def _image_path(input_dir: Path, image: str, sandbox: Sandbox | None = None) -> Path:
    """The file ``image`` names inside ``input_dir``; never a path that leaves it. Refusals call
    it by the name the workflow gave, never by the input folder's path."""
    check_path(image, "image")
    base = input_dir.resolve()
    path = (base / image).resolve()
    if os.path.isabs(image) or os.path.commonpath([str(path), str(base)]) != str(base):
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"image: {shown(image)} is not a file in the input folder", field="image"
        )
    if sandbox is not None:  # and inside a read root, like every path a request names
        return sandbox.readable_file(path, "image", ErrorCode.IMAGE_NOT_FOUND, name=image)
    if not path.is_file():
        raise GenserveError(
            ErrorCode.IMAGE_NOT_FOUND, f"image: file not found: {shown(image)}", field="image"
        )
    return path


def _load_image(ctx: NodeContext, image: str) -> tuple[torch.Tensor, torch.Tensor]:
    res = resources_of(ctx)
    if not reachable(image, res.confined):  # another key's file: as if it were not there
        raise GenserveError(
            ErrorCode.IMAGE_NOT_FOUND, f"image: file not found: {shown(image)}", field="image"
        )
    path = _image_path(res.input_dir, image, res.sandbox)
    with reading_image(path, "image", image, res.sandbox.max_image_pixels) as opened:
        opened.load()
        rgb = opened.convert("RGB")
        alpha = opened.getchannel("A") if "A" in opened.getbands() else None
    if alpha is not None:  # ComfyUI's mask: 1 where the image is transparent
        mask = 1.0 - torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)
    else:
        mask = torch.zeros((64, 64), dtype=torch.float32)
    return image_to_tensor([rgb]), mask.unsqueeze(0)


def _scale_to_total_pixels(
    ctx: NodeContext, image: torch.Tensor, upscale_method: str, megapixels: float, resolution_steps: int = 1
) -> tuple[torch.Tensor]:
    images = tensor_to_images(image)
    width, height = images[0].size
    size = dimensions_for_area(megapixels * COMFY_MEGAPIXEL, width, height, resolution_steps)
    return (image_to_tensor([resize(img, size, UPSCALE_METHODS[upscale_method]) for img in images]),)


# Flux Kontext's preferred sizes (width, height), as ComfyUI lists them.
KONTEXT_SIZES = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
    (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
    (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip


def _kontext_scale(ctx: NodeContext, image: torch.Tensor) -> tuple[torch.Tensor]:
    """To the preferred size nearest in aspect ratio: centre-cropped to that ratio, then lanczos."""
    height, width = int(image.shape[1]), int(image.shape[2])
    _, size = min((abs(width / height - w / h), (w, h)) for w, h in KONTEXT_SIZES)
    images = [ImageOps.fit(img, size, Image.Resampling.LANCZOS) for img in tensor_to_images(image)]
    return (image_to_tensor(images),)


KONTEXT_SCALE = NodeType(
    "FluxKontextImageScale",
    _kontext_scale,
    required={"image": Linked("IMAGE")},
    return_types=("IMAGE",),
    description="This node resizes the image to one that is more optimal for flux kontext.",
    category="advanced/conditioning/flux",
)


def _vae_encode(ctx: NodeContext, pixels: torch.Tensor, vae: VaeRef) -> tuple[dict[str, torch.Tensor]]:
    """Crops to the VAE's grid from the centre, as ComfyUI: 8 px, 16 px for Qwen-Image 2.1's VAE
    (which also keeps an IMAGE's alpha channel: it encodes RGBA)."""
    res = resources_of(ctx)
    images = tensor_to_images(pixels, keep_alpha=True)
    rctx = res.run_context(ctx)
    with rctx.use_model(ModelKind.VAE, vae.vae_name, "vae") as model:
        side = getattr(model.config, "spatial_compression", LATENT_PIXELS)
        images = _cropped_to(images, side)
        latents = []
        for img in images:
            rctx.check_cancelled()
            try:
                latents.append(vae_encode(model, img))
            except Exception as exc:
                raise GenserveError(ErrorCode.ENCODING_FAILED, f"VAE encoding failed: {exc}") from exc
    return ({"samples": torch.cat(latents)},)


def _cropped_to(images: list[Image.Image], side: int) -> list[Image.Image]:
    width, height = images[0].size
    crop = (width // side * side, height // side * side)
    if 0 in crop:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"pixels: {width}x{height} is smaller than {side}x{side}"
        )
    if crop == (width, height):
        return images
    left, top = (width - crop[0]) // 2, (height - crop[1]) // 2
    return [img.crop((left, top, left + crop[0], top + crop[1])) for img in images]


def _vae_decode(ctx: NodeContext, samples: dict[str, Any], vae: VaeRef) -> tuple[torch.Tensor]:
    res = resources_of(ctx)
    latent = latent_samples(samples)
    rctx = res.run_context(ctx)
    if latent.dim() == 5 and latent.shape[2] != 1:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"samples: a latent of {latent.shape[2]} layers; split it into a batch first "
            "(LatentCutToBatch with dim t), as the layered templates do",
            field="samples",
        )
    images = [decode_latent(latent[i : i + 1], vae.vae_name, rctx)[0] for i in range(latent.shape[0])]
    return (image_to_tensor(images, keep_alpha=True),)


def _fingerprint(input_dir: Path) -> Callable[..., Any]:
    def fingerprint(image: str, **_: Any) -> Any:
        try:
            stat = _image_path(input_dir, image).stat()
        except (GenserveError, OSError):
            return None  # the run reports the missing file
        return [stat.st_mtime_ns, stat.st_size]

    return fingerprint


def _delay(ctx: NodeContext, image: torch.Tensor, seconds: float) -> tuple[torch.Tensor]:
    """Hold the image for ``seconds`` of simulated work, reporting progress and honouring interrupts.

    For load tests and queue demonstrations: a job whose length is known in advance shows what the
    queue, the balancer and the progress messages do under long work (no node may be time-capped).
    """
    ticks = max(1, math.ceil(seconds * 10))
    started = time.monotonic()
    for tick in range(1, ticks + 1):
        ctx.check_cancelled()
        time.sleep(max(0.0, started + seconds * tick / ticks - time.monotonic()))
        ctx.progress(tick, ticks)
    ctx.check_cancelled()
    return (image,)


def image_node_types(input_dir: Path | None) -> list[NodeType]:
    """The image node types; LoadImage lists and fingerprints files in ``input_dir`` when given.

    Without ``input_dir`` LoadImage cannot see a file before it runs, so it is not cached at all
    (a stale image is worse than a re-read).
    """
    image_input: InputSpec = (
        Combo(input_images(input_dir), tooltip="image file in the input folder")
        if input_dir is not None
        else String("", tooltip="image file in the input folder")
    )
    return [
        NodeType(
            "DelayImage",
            _delay,
            required={"image": Linked("IMAGE"), "seconds": Float(1.0, min=0.0, max=86400.0, step=0.1)},
            return_types=("IMAGE",),
            display_name="Delay (simulated work)",
            category="image/testing",
        ),
        NodeType(
            "LoadImage",
            _load_image,
            required={"image": with_options(image_input, image_upload=True)},
            return_types=("IMAGE", "MASK"),
            display_name="Load Image",
            category="image",
            cacheable=input_dir is not None,
            fingerprint=_fingerprint(input_dir) if input_dir is not None else None,
        ),
        NodeType(
            "ImageScaleToTotalPixels",
            _scale_to_total_pixels,
            required={
                "image": Linked("IMAGE"),
                "upscale_method": Combo(tuple(UPSCALE_METHODS), default="nearest-exact"),
                "megapixels": Float(1.0, min=0.01, max=16.0, step=0.01),
            },
            optional={"resolution_steps": Int(1, min=1, max=256)},
            return_types=("IMAGE",),
            category="image/upscaling",
        ),
        KONTEXT_SCALE,
        NodeType(
            "VAEEncode",
            _vae_encode,
            required={"pixels": Linked("IMAGE"), "vae": Linked("VAE")},
            return_types=("LATENT",),
            display_name="VAE Encode",
            category="latent",
        ),
        NodeType(
            "VAEDecode",
            _vae_decode,
            required={"samples": Linked("LATENT"), "vae": Linked("VAE")},
            return_types=("IMAGE",),
            display_name="VAE Decode",
            category="latent",
        ),
    ]
