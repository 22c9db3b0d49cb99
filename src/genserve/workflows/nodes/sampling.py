"""Conditioning and sampling node types: CLIPTextEncode, TextEncodeQwenImageEditPlus,
FluxKontextMultiReferenceLatentMethod, EmptySD3LatentImage, EmptyLatentImage, KSampler.

Each calls the function the matching service calls (``text_prompt.encode_text_prompts``,
``text_encoder.encode_prompts``, ``sampling.sample_with_models``), so a workflow and the services
give the same tensors for the same inputs. Only the glue differs: images arrive as IMAGE tensors
instead of file paths.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.services.pipeline import samplers
from genserve.services.pipeline.custom_sampling import CustomSampling
from genserve.services.pipeline.sampling import MAX_SEED, sample_with_models
from genserve.services.pipeline.text_encoder import (
    Encoding,
    encode_references,
    encode_texts,
    sized_references,
)
from genserve.services.pipeline.text_prompt import encode_text_prompts
from genserve.workflows.inputs import Combo, Float, Int, Linked, String, with_options
from genserve.workflows.nodes.base import NodeContext, NodeType
from genserve.workflows.nodes.custom_sampling import model_settings
from genserve.workflows.nodes.values import (
    ClipRef,
    ModelRef,
    VaeRef,
    latent_samples,
    resources_of,
    tensor_to_images,
)

LATENT_CHANNELS, VAE_SCALE = 16, 8


def _clip_text_encode(ctx: NodeContext, text: str, clip: ClipRef) -> tuple[Encoding]:
    """Qwen-Image's text-to-image prompt template, as the image_generation service encodes it."""
    res = resources_of(ctx)
    positive, _, _ = encode_text_prompts(text, None, clip.clip_name, res.run_context(ctx))
    return (positive,)


def _qwen_edit_plus(
    ctx: NodeContext,
    clip: ClipRef,
    prompt: str,
    vae: VaeRef | None = None,
    image1: torch.Tensor | None = None,
    image2: torch.Tensor | None = None,
    image3: torch.Tensor | None = None,
) -> tuple[Encoding]:
    """The text_encoder service's encoding from in-memory images: vision-size images named
    "Picture N" in the prompt, and (with a VAE) reference latents at the configured area."""
    res = resources_of(ctx)
    rctx = res.run_context(ctx)
    d = res.defaults
    given = [
        (name, t) for name, t in (("image1", image1), ("image2", image2), ("image3", image3)) if t is not None
    ]
    sources = [(name, tensor_to_images(t)[0]) for name, t in given]
    vision_area = d.vision_reference_megapixels * 1_000_000
    vae_area = d.vae_reference_megapixels * 1_000_000
    vision, for_vae = sized_references(sources, vision_area, vae_area)
    started = time.perf_counter()
    references = encode_references(rctx, vae.vae_name, "vae", sources, for_vae) if vae and sources else []
    [(embeds, mask)] = encode_texts(rctx, clip.clip_name, "clip", [prompt], vision)
    metadata = {
        "clip_model_name": clip.clip_name,
        "vae_model_name": vae.vae_name if vae is not None else None,
        "images": [name for name, _ in sources],
        "reference_sizes": [list(img.size) for img in for_vae] if references else [],
        "vision_sizes": [list(img.size) for img in vision],
        "encode_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    return (Encoding(embeds, mask, references, metadata),)


# ComfyUI's reference-latent placements. genserve's Qwen-Image sampler gives each reference latent
# its own RoPE frame index, as ComfyUI's Qwen model does for "index" and "index_timestep_zero"
# (whose timestep-zero modulation of the references genserve applies when the transformer file
# carries ComfyUI's ``__index_timestep_zero__`` marker, the Edit-2511 checkpoints). The Flux
# placements ("offset", "uxo/uno") it cannot do, so they are refused rather than ignored.
REFERENCE_METHODS = ("offset", "index", "uxo/uno", "index_timestep_zero")
BY_INDEX = ("index", "index_timestep_zero")


def _reference_method(
    ctx: NodeContext, conditioning: Encoding, reference_latents_method: str
) -> tuple[Encoding]:
    if reference_latents_method not in BY_INDEX:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"reference_latents_method: {reference_latents_method!r} is not supported; genserve's "
            f"Qwen-Image sampler places reference latents by index only ({' or '.join(BY_INDEX)})",
            field="reference_latents_method",
        )
    metadata = {**conditioning.metadata, "reference_latents_method": reference_latents_method}
    return (replace(conditioning, metadata=metadata),)


def _empty_latent(ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> tuple[dict[str, Any]]:
    """Zeros at ``width // 8`` x ``height // 8``, as ComfyUI: a side that is not a multiple of 8
    loses the rest, and an odd latent side is padded to the sampler's 2x2 grid while sampling."""
    for name, side in (("width", width), ("height", height)):
        if side < VAE_SCALE:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"{name}: must be at least {VAE_SCALE}, got {side}", field=name
            )
    shape = (batch_size, LATENT_CHANNELS, 1, height // VAE_SCALE, width // VAE_SCALE)
    return ({"samples": torch.zeros(shape)},)


def _ksampler(
    ctx: NodeContext,
    model: ModelRef,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Encoding,
    negative: Encoding,
    latent_image: dict[str, Any],
    denoise: float = 1.0,
) -> tuple[dict[str, Any]]:
    res = resources_of(ctx)
    latent = latent_samples(latent_image)
    if denoise <= 0:  # ComfyUI: no sigmas, the latent comes back unchanged
        return ({"samples": latent},)
    settings = {
        "seed": seed,
        "steps": steps,
        "cfg": cfg,
        "sampler_name": sampler_name,
        "scheduler": scheduler,
        "denoise": denoise,
        **model_settings(model, ctx),
    }
    sampled, _ = sample_with_models(
        positive,
        negative if cfg != 1.0 else None,
        latent,
        settings,
        res.run_context(ctx),
        CustomSampling(noise_mask=latent_image.get("noise_mask")),  # SetLatentNoiseMask
        model.patches,
    )
    return ({**latent_image, "samples": sampled},)


MAX_LAYERS = 64  # ComfyUI allows 16384; each layer is a whole image's tokens more to sample


def _empty_layered(
    ctx: NodeContext, width: int, height: int, layers: int, batch_size: int = 1
) -> tuple[dict[str, Any]]:
    """Zeros ``[B, 16, layers + 1, H/8, W/8]``: the composite image, then one frame per layer."""
    (empty,) = _empty_latent(ctx, width, height, batch_size)
    return ({"samples": empty["samples"].repeat(1, 1, layers + 1, 1, 1)},)


def _latent_node_types() -> list[NodeType]:
    """ComfyUI's generic latent and reference-method nodes, for the templates that use them."""
    return [
        NodeType(
            "EmptyLatentImage",
            _empty_latent,
            required={
                "width": Int(512, min=16, max=16384, step=8),
                "height": Int(512, min=16, max=16384, step=8),
                "batch_size": Int(1, min=1, max=4096),
            },
            return_types=("LATENT",),
            display_name="Empty Latent Image",
            description="Create a new batch of empty latent images to be denoised via sampling.",
            category="latent",
        ),
        NodeType(
            "EmptyQwenImageLayeredLatentImage",
            _empty_layered,
            required={
                "width": Int(640, min=16, max=16384, step=16),
                "height": Int(640, min=16, max=16384, step=16),
                "layers": Int(3, min=0, max=MAX_LAYERS),
                "batch_size": Int(1, min=1, max=4096),
            },
            return_types=("LATENT",),
            display_name="Empty Qwen Image Layered Latent",
            category="latent/qwen",
        ),
        NodeType(
            "FluxKontextMultiReferenceLatentMethod",
            _reference_method,
            required={
                "conditioning": Linked("CONDITIONING"),
                "reference_latents_method": Combo(REFERENCE_METHODS, default="index"),
            },
            return_types=("CONDITIONING",),
            category="advanced/conditioning/flux",
        ),
    ]


def sampling_node_types() -> list[NodeType]:
    return [
        NodeType(
            "CLIPTextEncode",
            _clip_text_encode,
            required={"text": String("", multiline=True), "clip": Linked("CLIP")},
            return_types=("CONDITIONING",),
            display_name="CLIP Text Encode (Prompt)",
            category="conditioning",
        ),
        NodeType(
            "TextEncodeQwenImageEditPlus",
            _qwen_edit_plus,
            required={"clip": Linked("CLIP"), "prompt": String("", multiline=True)},
            optional={
                "vae": Linked("VAE"),
                "image1": Linked("IMAGE"),
                "image2": Linked("IMAGE"),
                "image3": Linked("IMAGE"),
            },
            return_types=("CONDITIONING",),
            category="advanced/conditioning",
        ),
        NodeType(
            "EmptySD3LatentImage",
            _empty_latent,
            required={
                "width": Int(1024, min=16, max=16384, step=16),
                "height": Int(1024, min=16, max=16384, step=16),
                "batch_size": Int(1, min=1, max=4096),
            },
            return_types=("LATENT",),
            category="latent/sd3",
        ),
        *_latent_node_types(),
        NodeType(
            "KSampler",
            _ksampler,
            required={
                "model": Linked("MODEL"),
                "seed": with_options(Int(0, min=0, max=MAX_SEED), control_after_generate=True),
                "steps": Int(20, min=1, max=10000),
                "cfg": Float(8.0, min=0.0, max=100.0, step=0.1),
                "sampler_name": Combo(tuple(samplers.SAMPLERS), default="euler"),
                "scheduler": Combo(tuple(samplers.SCHEDULERS), default="simple"),
                "positive": Linked("CONDITIONING"),
                "negative": Linked("CONDITIONING"),
                "latent_image": Linked("LATENT"),
                "denoise": Float(1.0, min=0.0, max=1.0, step=0.01),
            },
            return_types=("LATENT",),
            category="sampling",
        ),
    ]
