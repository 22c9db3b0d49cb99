"""Conditioning and latent-editing node types: ReferenceLatent, ConditioningZeroOut,
TextEncodeQwenImageEdit, SetLatentNoiseMask, LatentCut, LatentCutToBatch.

A CONDITIONING here is the services' ``Encoding``; these nodes return a new one and never change
the one they were given, which the output cache may still hold for another branch of the graph.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.services.pipeline.imaging import dimensions_for_area, resize
from genserve.services.pipeline.text_encoder import Encoding, encode_references, encode_texts
from genserve.workflows.inputs import Combo, Int, Linked, String
from genserve.workflows.nodes.base import NodeContext, NodeType
from genserve.workflows.nodes.values import (
    ClipRef,
    VaeRef,
    latent_samples,
    resources_of,
    tensor_to_images,
)

MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION
# ComfyUI's TextEncodeQwenImageEdit puts the one image before the prompt with no "Picture 1:" label.
UNLABELLED_PICTURE = "<|vision_start|><|image_pad|><|vision_end|>"
# Pixel sides of the edit image: 8x VAE compression and the transformer's 2x2 patches.
EDIT_IMAGE_MULTIPLE = 16


def _reference_latent(
    ctx: NodeContext, conditioning: Encoding, latent: dict[str, Any] | None = None
) -> tuple[Encoding]:
    if latent is None:
        return (conditioning,)
    samples = latent_samples(latent)
    if samples.shape[0] != 1 or samples.shape[2] != 1:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"latent: a reference latent is one image, got {samples.shape[0]} x {samples.shape[2]} frames",
            field="latent",
        )
    references = [*conditioning.reference_latents, samples]
    return (replace(conditioning, reference_latents=references, metadata=dict(conditioning.metadata)),)


def _zero_out(ctx: NodeContext, conditioning: Encoding) -> tuple[Encoding]:
    zeroed = torch.zeros_like(conditioning.prompt_embeds)
    return (replace(conditioning, prompt_embeds=zeroed, metadata=dict(conditioning.metadata)),)


def _qwen_image_edit(
    ctx: NodeContext,
    clip: ClipRef,
    prompt: str,
    vae: VaeRef | None = None,
    image: torch.Tensor | None = None,
) -> tuple[Encoding]:
    """One image, at the VAE reference area (ComfyUI: 1024x1024 pixels of area, genserve's default
    ``pipeline.vae_reference_megapixels``), both shown to the vision tower and VAE-encoded."""
    res = resources_of(ctx)
    rctx = res.run_context(ctx)
    sized = []
    if image is not None:
        source = tensor_to_images(image)[0]
        area = res.defaults.vae_reference_megapixels * 1_000_000
        size = dimensions_for_area(area, source.width, source.height, EDIT_IMAGE_MULTIPLE)
        sized = [resize(source, size, "area")]
    started = time.perf_counter()
    references = []
    if vae is not None and sized:
        references = encode_references(rctx, vae.vae_name, "vae", [("image", sized[0])], sized)
    [(embeds, mask)] = encode_texts(rctx, clip.clip_name, "clip", [prompt], sized, UNLABELLED_PICTURE)
    metadata = {
        "clip_model_name": clip.clip_name,
        "vae_model_name": vae.vae_name if vae is not None else None,
        "images": ["image"] if sized else [],
        "reference_sizes": [list(sized[0].size)] if references else [],
        "vision_sizes": [list(img.size) for img in sized],
        "encode_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    return (Encoding(embeds, mask, references, metadata),)


def _set_noise_mask(ctx: NodeContext, samples: dict[str, Any], mask: torch.Tensor) -> tuple[dict[str, Any]]:
    latent_samples(samples)
    if mask.dim() < 2:
        raise GenserveError(ErrorCode.INVALID_INPUT, f"mask: expected [B, H, W], got {list(mask.shape)}")
    return ({**samples, "noise_mask": mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])},)


def _axis(samples: torch.Tensor, dim: str) -> int:
    """ComfyUI counts x, y and t from the end: genserve's ``[B, C, T, H, W]`` latent fits as is."""
    return samples.dim() - {"x": 1, "y": 2, "t": 3}[dim]


def _latent_cut(
    ctx: NodeContext, samples: dict[str, Any], dim: str, index: int, amount: int
) -> tuple[dict[str, Any]]:
    tensor = latent_samples(samples)
    axis = _axis(tensor, dim)
    size = tensor.shape[axis]
    if index >= 0:
        index = min(index, size - 1)
        amount = min(size - index, amount)
    else:
        index = max(index, -size)
        amount = min(-index, amount)
    return ({**samples, "samples": torch.narrow(tensor, axis, index, amount)},)


def _latent_cut_to_batch(
    ctx: NodeContext, samples: dict[str, Any], dim: str, slice_size: int
) -> tuple[dict[str, Any]]:
    tensor = latent_samples(samples)
    axis = _axis(tensor, dim)
    moved = tensor.movedim(axis, 1)
    if moved.shape[1] < slice_size:
        slice_size = moved.shape[1]
    elif moved.shape[1] % slice_size:
        moved = moved[:, : math.floor(moved.shape[1] / slice_size) * slice_size]
    batched = moved.reshape(-1, slice_size, *moved.shape[2:]).movedim(1, axis)
    return ({**samples, "samples": batched},)


def conditioning_node_types() -> list[NodeType]:
    return [
        NodeType(
            "ReferenceLatent",
            _reference_latent,
            required={"conditioning": Linked("CONDITIONING")},
            optional={"latent": Linked("LATENT")},
            return_types=("CONDITIONING",),
            category="advanced/conditioning/edit_models",
            description="Sets the guiding latent for an edit model; chain several for several references.",
        ),
        NodeType(
            "ConditioningZeroOut",
            _zero_out,
            required={"conditioning": Linked("CONDITIONING")},
            return_types=("CONDITIONING",),
            category="advanced/conditioning",
        ),
        NodeType(
            "TextEncodeQwenImageEdit",
            _qwen_image_edit,
            required={"clip": Linked("CLIP"), "prompt": String("", multiline=True)},
            optional={"vae": Linked("VAE"), "image": Linked("IMAGE")},
            return_types=("CONDITIONING",),
            category="advanced/conditioning",
        ),
        NodeType(
            "SetLatentNoiseMask",
            _set_noise_mask,
            required={"samples": Linked("LATENT"), "mask": Linked("MASK")},
            return_types=("LATENT",),
            category="latent/inpaint",
        ),
        NodeType(
            "LatentCut",
            _latent_cut,
            required={
                "samples": Linked("LATENT"),
                "dim": Combo(("x", "y", "t"), default="x"),
                "index": Int(0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
                "amount": Int(1, min=1, max=MAX_RESOLUTION, step=1),
            },
            return_types=("LATENT",),
            category="latent/advanced",
        ),
        NodeType(
            "LatentCutToBatch",
            _latent_cut_to_batch,
            required={
                "samples": Linked("LATENT"),
                "dim": Combo(("t", "x", "y"), default="t"),
                "slice_size": Int(1, min=1, max=MAX_RESOLUTION, step=1),
            },
            return_types=("LATENT",),
            category="latent/advanced",
        ),
    ]
