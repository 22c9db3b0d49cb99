"""text_encoder: images + prompt -> positive and negative encoding files.

ComfyUI's TextEncodeQwenImageEditPlus: each image is resized to about 384x384 pixels of area
for the vision tower and named in the prompt as "Picture N"; with a VAE, each is also resized to
about 1 MP and VAE-encoded as a reference latent. An encoding file keeps everything sampling
needs (embeddings, mask, reference latents and their sizes), so nothing the one-piece pipeline
uses is lost in the split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image
from pydantic import Field

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.text_encoder import EDIT_PROMPT_TEMPLATE, TEMPLATE_PREFIX_TOKENS
from genserve.models.registry import ModelKind
from genserve.services.base import RunContext, Service, ServiceModel
from genserve.services.pipeline.control import ControlHint
from genserve.services.pipeline.imaging import fitted_dimensions, resize, vae_encode
from genserve.storage.artifacts import save_tensors
from genserve.storage.images import load_image

ENCODING_FORMAT = "genserve.encoding/1"
PICTURE = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"
REFERENCE_MULTIPLE = 32
MAX_PROMPT_CHARS = 20_000


class TextEncodeRequest(ServiceModel):
    image1_path: str = Field(description="First reference image (e.g. the masked person).")
    image2_path: str | None = Field(None, description="Second reference image (e.g. the cloth).")
    image3_path: str | None = Field(None, description="Optional third reference image.")
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    clip_model_name: str | None = Field(None, description="Qwen2.5-VL folder under models/text_encoders.")
    vae_model_name: str | None = Field(
        None, description="VAE for the reference latents; default from config, '' for none."
    )
    output_dir: str | None = None
    vae_reference_megapixels: float | None = Field(None, gt=0, le=16)
    vision_reference_megapixels: float | None = Field(None, gt=0, le=4)


class TextEncodeResponse(ServiceModel):
    status: Literal["success"] = "success"
    request_id: str
    positive_encoding_file: str
    negative_encoding_file: str
    positive_shape: list[int]
    negative_shape: list[int]
    metadata: dict[str, Any]


@dataclass
class Encoding:
    """One conditioning: what a sampler needs from the text encoder, in memory."""

    prompt_embeds: torch.Tensor  # [1, L, D]
    prompt_mask: torch.Tensor  # [1, L], 1 = real token
    reference_latents: list[torch.Tensor]  # each [1, 16, 1, h, w], normalised
    metadata: dict[str, Any]
    # ControlNets applied to this conditioning (ControlNetApplyAdvanced), in chain order; in memory
    # only: an encoding file never carries them.
    controls: tuple[ControlHint, ...] = ()

    def to_file_payload(self) -> dict[str, Any]:
        return {
            "format": ENCODING_FORMAT,
            "prompt_embeds": self.prompt_embeds,
            "prompt_mask": self.prompt_mask,
            "reference_latents": self.reference_latents,
            **self.metadata,
        }


@torch.no_grad()
def encode_prompts(
    text_encoder: Any,
    prompts: list[str],
    images: list[Image.Image],
    template: str = EDIT_PROMPT_TEMPLATE,
    prefix_tokens: int = TEMPLATE_PREFIX_TOKENS,
    picture: str = PICTURE,
    field: str = "clip_model_name",
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The last hidden state of Qwen2.5-VL over ``template`` (the edit one by default), its first
    ``prefix_tokens`` (the system prefix) dropped, per prompt.

    The images are shared by every prompt, so their patches and vision-tower features are
    computed once and handed to each prompt's pass; each prompt's result is the same as encoding
    it alone. The base model's last hidden state equals the full model's hidden_states[-1] bit for
    bit, without the language-model head (152k x 3584 per token on the real weights).
    """
    if getattr(text_encoder, "family", "qwen2.5-vl") != "qwen2.5-vl":
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: {text_encoder.name} is a {text_encoder.family_label} text encoder, for Qwen-Image "
            "2.1; Qwen-Image's encodings take its Qwen2.5-VL one (2.1 encodes with the workflow node "
            "TextEncodeQwenImage21)",
            field=field,
        )
    base = text_encoder.model.model
    device = text_encoder.device
    pictures = "".join(picture.format(i + 1) for i in range(len(images)))
    vision = text_encoder.processor.images(images)
    grid = vision["image_grid_thw"].to(device) if vision else None
    features = (
        base.get_image_features(vision["pixel_values"].to(device), grid, return_dict=True) if vision else None
    )
    results = []
    for prompt in prompts:
        tokens = text_encoder.processor.text([template.format(pictures + prompt)], vision)
        mask = tokens["attention_mask"].to(device)
        outputs = base(
            input_ids=tokens["input_ids"].to(device),
            attention_mask=mask,
            image_grid_thw=grid,
            mm_encoder_outputs={"image": features} if features is not None else None,
        )
        hidden = outputs.last_hidden_state[0][mask[0].bool()]
        embeds = hidden[prefix_tokens:].unsqueeze(0).float().cpu()
        results.append((embeds, torch.ones(embeds.shape[:2], dtype=torch.long)))
    return results


def load_reference_images(request: TextEncodeRequest, ctx: RunContext) -> list[tuple[str, Image.Image]]:
    fields = [("image1_path", request.image1_path), ("image2_path", request.image2_path)]
    fields.append(("image3_path", request.image3_path))
    images = []
    for field, value in fields:
        if value is None or (value == "" and field != "image1_path"):  # "" is gRPC's unset
            continue
        images.append((field, load_image(ctx.sandbox, value, field)))
    return images


def sized_references(
    sources: list[tuple[str, Image.Image]], vision_area: float, vae_area: float
) -> tuple[list[Image.Image], list[Image.Image]]:
    """Each reference image at the vision tower's area and at the VAE reference area."""

    def at(area: float) -> list[Image.Image]:
        return [
            resize(img, fitted_dimensions(area, img, REFERENCE_MULTIPLE, field)) for field, img in sources
        ]

    return at(vision_area), at(vae_area)


def encode_references(
    ctx: RunContext,
    vae_name: str,
    field: str,
    sources: list[tuple[str, Image.Image]],
    images: list[Image.Image],
) -> list[torch.Tensor]:
    """The reference latents: each (already sized) image VAE-encoded; a failure names the image."""
    references: list[torch.Tensor] = []
    with ctx.use_model(ModelKind.VAE, vae_name, field) as vae:
        for (name, _), image in zip(sources, images, strict=True):
            ctx.check_cancelled()
            try:
                references.append(vae_encode(vae, image))
            except Exception as exc:
                raise GenserveError(
                    ErrorCode.ENCODING_FAILED,
                    f"VAE encoding of {name} for the reference latent failed: {exc}",
                ) from exc
    return references


def encode_texts(
    ctx: RunContext,
    clip_name: str,
    field: str,
    prompts: list[str],
    vision_images: list[Image.Image],
    picture: str = PICTURE,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(embeddings, mask) per prompt, with the vision-size images labelled by ``picture`` ("Picture
    N" by default; ComfyUI's single-image TextEncodeQwenImageEdit gives the image no label)."""
    with ctx.use_model(ModelKind.TEXT_ENCODER, clip_name, field) as text_encoder:
        ctx.check_cancelled()
        try:
            return encode_prompts(text_encoder, prompts, vision_images, picture=picture, field=field)
        except GenserveError:
            raise
        except Exception as exc:
            raise GenserveError(
                ErrorCode.ENCODING_FAILED, f"text encoding of the prompts failed: {exc}"
            ) from exc


def encode_conditions(request: TextEncodeRequest, ctx: RunContext, with_negative: bool = True):
    """(positive, negative or None): shared with ``edit``, no file written."""
    defaults = ctx.defaults
    clip_name = request.clip_model_name or defaults.clip_model_name
    vae_name = defaults.vae_model_name if request.vae_model_name is None else request.vae_model_name
    vae_area = (request.vae_reference_megapixels or defaults.vae_reference_megapixels) * 1_000_000
    vision_area = (request.vision_reference_megapixels or defaults.vision_reference_megapixels) * 1_000_000
    sources = load_reference_images(request, ctx)
    condition_images, vae_images = sized_references(sources, vision_area, vae_area)
    timings: dict[str, float] = {}
    references: list[torch.Tensor] = []
    if vae_name:
        started = time.perf_counter()
        references = encode_references(ctx, vae_name, "vae_model_name", sources, vae_images)
        timings["reference_encode_ms"] = round((time.perf_counter() - started) * 1000, 3)
    prompts = [("positive", request.prompt)] + (
        [("negative", request.negative_prompt)] if with_negative else []
    )
    results: dict[str, Encoding] = {}
    started = time.perf_counter()
    encoded = encode_texts(ctx, clip_name, "clip_model_name", [p for _, p in prompts], condition_images)
    for (label, _), (embeds, mask) in zip(prompts, encoded, strict=True):
        metadata = {
            "clip_model_name": clip_name,
            "vae_model_name": vae_name or None,
            "role": label,
            "images": [field for field, _ in sources],
            "reference_sizes": [list(img.size) for img in vae_images] if vae_name else [],
            "vision_sizes": [list(img.size) for img in condition_images],
        }
        results[label] = Encoding(embeds, mask, references, metadata)
    timings["text_encode_ms"] = round((time.perf_counter() - started) * 1000, 3)
    for encoding in results.values():
        encoding.metadata["timings"] = timings
    return results["positive"], results.get("negative")


def run(request: TextEncodeRequest, ctx: RunContext) -> TextEncodeResponse:
    output_dir = ctx.sandbox.output_dir(request.output_dir)
    positive, negative = encode_conditions(request, ctx)
    assert negative is not None
    positive_path = output_dir / f"positive_enc_{ctx.file_tag}.pt"
    negative_path = output_dir / f"negative_enc_{ctx.file_tag}.pt"
    save_tensors(positive_path, positive.to_file_payload())
    save_tensors(negative_path, negative.to_file_payload())
    return TextEncodeResponse(
        request_id=ctx.request_id,
        positive_encoding_file=str(positive_path),
        negative_encoding_file=str(negative_path),
        positive_shape=list(positive.prompt_embeds.shape),
        negative_shape=list(negative.prompt_embeds.shape),
        metadata={
            "reference_latent_shapes": [list(t.shape) for t in positive.reference_latents],
            **{k: v for k, v in positive.metadata.items() if k != "role"},
        },
    )


SERVICE = Service(
    name="text_encoder",
    request_model=TextEncodeRequest,
    response_model=TextEncodeResponse,
    run=run,
    description="Encode a prompt with up to three reference images into conditioning files for sampling.",
)
