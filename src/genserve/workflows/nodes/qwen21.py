"""Qwen-Image 2.1's node types: TextEncodeQwenImage21 and QwenImage21Cache, as ComfyUI declares them.

TextEncodeQwenImage21 sizes each reference image once for both the text encoder and the VAE (at
multiples of 32 px, so every merged vision token covers 2x2 latent pixels), encodes the prompt and
the negative prompt with the same images, and answers an empty latent at the first reference's
size: sampling at another size shifts an edit. With a VAE the references become latents that the
transformer splices in where their vision tokens were (``image_slots``); without one the vision
tokens stay and the images condition through the text encoder alone, as in ComfyUI.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from genserve.errors import ErrorCode, GenserveError
from genserve.models.arch.prefix_cache import DEVICES, DTYPES
from genserve.models.registry import ModelKind
from genserve.services.pipeline.imaging import resize
from genserve.services.pipeline.qwen21_denoiser import SLOTS_KEY
from genserve.services.pipeline.qwen21_prompt import encode_qwen21
from genserve.services.pipeline.text_encoder import Encoding, encode_references
from genserve.workflows.inputs import Combo, Int, Linked, String
from genserve.workflows.nodes.base import NodeContext, NodeType
from genserve.workflows.nodes.values import (
    QWEN21,
    ClipRef,
    ModelRef,
    VaeRef,
    resources_of,
    tensor_to_images,
)

MAX_IMAGES = 16  # ComfyUI's Autogrow images.image_1 .. images.image_16
IMAGE_MULTIPLE = 32
LATENT_CHANNELS = 64
LATENT_SCALE = 16
DEFAULT_RESOLUTION = 1024


def reference_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """About ``resolution`` squared pixels at the image's aspect ratio, sides multiples of 32 (at
    least 32); resolution 0 keeps the image's own size, rounded to multiples of 32."""
    if resolution > 0:
        ratio = width / height
        width = round(math.sqrt(resolution * resolution * ratio) / IMAGE_MULTIPLE) * IMAGE_MULTIPLE
        height = round(math.sqrt(resolution * resolution / ratio) / IMAGE_MULTIPLE) * IMAGE_MULTIPLE
    else:
        width = round(width / IMAGE_MULTIPLE) * IMAGE_MULTIPLE
        height = round(height / IMAGE_MULTIPLE) * IMAGE_MULTIPLE
    return max(IMAGE_MULTIPLE, width), max(IMAGE_MULTIPLE, height)


def _over_white(image: Image.Image) -> Image.Image:
    """What the vision tower sees: alpha composited over white (the VAE keeps all four channels)."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    white = Image.new("RGB", image.size, (255, 255, 255))
    white.paste(image, mask=image.getchannel("A"))
    return white


def _ordered_images(images: dict[str, torch.Tensor]) -> list[Image.Image]:
    def index(name: str) -> int:
        try:
            return int(name.rsplit("_", 1)[1])
        except (IndexError, ValueError):
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"{name}: not an image input of TextEncodeQwenImage21 "
                f"(images.image_1 .. images.image_{MAX_IMAGES})",
                field=name,
            ) from None

    names = sorted(images, key=index)
    if len(names) > MAX_IMAGES or any(not 1 <= index(n) <= MAX_IMAGES for n in names):
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"images: at most {MAX_IMAGES} reference images (images.image_1 .. images.image_{MAX_IMAGES})",
            field="images",
        )
    return [tensor_to_images(images[name][:1], keep_alpha=True)[0] for name in names]


def _text_encode_qwen21(
    ctx: NodeContext,
    clip: ClipRef,
    prompt: str,
    negative_prompt: str,
    vae: VaeRef | None = None,
    resolution: int = DEFAULT_RESOLUTION,
    **images: torch.Tensor,
) -> tuple[Encoding, Encoding, dict[str, Any]]:
    res = resources_of(ctx)
    rctx = res.run_context(ctx)
    started = time.perf_counter()
    sized = []
    for image in _ordered_images(images):
        size = reference_size(image.width, image.height, resolution)
        sized.append(resize(image, size, "lanczos"))
    references: list[torch.Tensor] = []
    if vae is not None and sized:
        sources = [(f"images.image_{i + 1}", image) for i, image in enumerate(sized)]
        references = encode_references(rctx, vae.vae_name, "vae", sources, sized)
    vision = [_over_white(image) for image in sized]
    keep_vision = not references
    with rctx.use_model(ModelKind.TEXT_ENCODER, clip.clip_name, "clip") as text_encoder:
        encoded = [
            encode_qwen21(text_encoder, text, vision, keep_vision) for text in (prompt, negative_prompt)
        ]
    metadata = {
        "clip_model_name": clip.clip_name,
        "vae_model_name": vae.vae_name if vae is not None else None,
        "reference_sizes": [list(image.size) for image in sized] if references else [],
        "vision_sizes": [list(image.size) for image in sized],
        "encode_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    conditionings = []
    for result in encoded:
        hidden = result.hidden.float().cpu()
        mask = torch.ones(hidden.shape[:2], dtype=torch.long)
        conditionings.append(
            Encoding(hidden, mask, list(references), {**metadata, SLOTS_KEY: list(result.image_slots)})
        )
    width = height = resolution or DEFAULT_RESOLUTION
    if sized:
        width, height = sized[0].size
    latent = torch.zeros(1, LATENT_CHANNELS, 1, height // LATENT_SCALE, width // LATENT_SCALE)
    return conditionings[0], conditionings[1], {"samples": latent}


def _qwen21_cache(ctx: NodeContext, model: ModelRef, device: str, dtype: str) -> tuple[ModelRef]:
    if model.family != QWEN21:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"model: {model.unet_name} is not a Qwen-Image 2.1 diffusion model; the prefix cache is 2.1's",
            field="model",
        )
    return (replace(model, prefix_cache=(device, dtype)),)


def qwen21_node_types() -> list[NodeType]:
    return [
        NodeType(
            "TextEncodeQwenImage21",
            _text_encode_qwen21,
            required={
                "clip": Linked("CLIP"),
                "prompt": String("", multiline=True),
                "negative_prompt": String("", multiline=True),
            },
            optional={
                "vae": Linked("VAE"),
                "resolution": Int(
                    DEFAULT_RESOLUTION,
                    min=0,
                    max=4096,
                    step=32,
                    tooltip="Reference images are resized to about resolution x resolution pixels, at "
                    "multiples of 32, preserving aspect ratio. 0 keeps each reference at its own size, "
                    "rounded to a multiple of 32. ",
                ),
                **{f"images.image_{i}": Linked("IMAGE") for i in range(1, MAX_IMAGES + 1)},
            },
            return_types=("CONDITIONING", "CONDITIONING", "LATENT"),
            return_names=("positive", "negative", "latent"),
            display_name="Text Encode Qwen Image 2.1",
            category="model/conditioning/qwen image",
        ),
        NodeType(
            "QwenImage21Cache",
            _qwen21_cache,
            required={
                "model": Linked("MODEL"),
                "device": Combo(
                    DEVICES,
                    default="auto",
                    tooltip="auto uses spare VRAM, then RAM. cpu (RAM) is prefetched behind compute and "
                    "costs little speed. off recomputes the prefix every step, which is slower but is the "
                    "one way to rule the cache out.",
                ),
                "dtype": Combo(
                    DTYPES,
                    default="default",
                    tooltip="Storage precision. default is lossless. int8 halves the cache at about bf16 "
                    "accuracy, int4 quarters it but roughly doubles the per-step error.",
                ),
            },
            return_types=("MODEL",),
            display_name="Qwen Image 2.1 Cache",
            category="model/conditioning/qwen image",
            experimental=True,
            description="Allows setting the KV cache device and quantization, by default the model uses the "
            "auto -option. Quantization potentially speeds up edit workflows when memory starved ",
        ),
    ]
