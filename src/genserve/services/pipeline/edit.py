"""edit: the whole Qwen-Image-Edit pipeline in one call, from the four services' own code.

It builds each service's request from its own and calls the same functions the split services
call, passing tensors in memory instead of files. Files are saved losslessly, so the split
pipeline and ``edit`` give the same image for the same inputs and seed.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from genserve.config import UpscaleMethod
from genserve.services.base import RunContext, Service, ServiceModel
from genserve.services.pipeline.decoding import DecodeRequest, OutputFormat, decode_latent, write_image
from genserve.services.pipeline.latent_encoder import LatentEncodeRequest, encode_image_file
from genserve.services.pipeline.sampling import (
    ModelTransformParams,
    SampleRequest,
    SamplingParams,
    resolved_settings,
    sample_with_models,
)
from genserve.services.pipeline.text_encoder import MAX_PROMPT_CHARS, TextEncodeRequest, encode_conditions


class EditRequest(ServiceModel):
    image1_path: str = Field(description="The image to edit; also sets the output size.")
    image2_path: str | None = None
    image3_path: str | None = None
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    vae_model_name: str | None = None
    clip_model_name: str | None = None
    unet_model_name: str | None = None
    lora_model_name: str | None = None
    lora_strength: float | None = Field(None, ge=-10, le=10)
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    model_transform_params: ModelTransformParams = Field(default_factory=ModelTransformParams)
    upscale_method: UpscaleMethod | None = None
    megapixels: float | None = Field(None, gt=0, le=16)
    vae_reference_megapixels: float | None = Field(None, gt=0, le=16)
    vision_reference_megapixels: float | None = Field(None, gt=0, le=4)
    output_filename: str = Field("edit", max_length=200)
    output_dir: str | None = None
    output_format: OutputFormat | None = None


class EditResponse(ServiceModel):
    status: Literal["success"] = "success"
    request_id: str
    image_file_path: str
    image_shape: list[int]
    file_size: int
    metadata: dict[str, Any]


def run(request: EditRequest, ctx: RunContext) -> EditResponse:
    started = time.perf_counter()
    decode_request = DecodeRequest(
        latent_file="(in memory)",
        vae_model_name=request.vae_model_name,
        output_filename=request.output_filename,
        output_dir=request.output_dir,
        output_format=request.output_format,
    )
    ctx.sandbox.output_dir(request.output_dir)
    ctx.sandbox.output_name(request.output_filename, "output_filename")
    sample_request = SampleRequest(
        positive_encoding_file="(in memory)",
        latent_file="(in memory)",
        unet_model_name=request.unet_model_name,
        lora_model_name=request.lora_model_name,
        lora_strength=request.lora_strength,
        sampling_params=request.sampling_params,
        model_transform_params=request.model_transform_params,
    )
    settings = resolved_settings(sample_request, ctx)
    latent, latent_meta = encode_image_file(
        LatentEncodeRequest(
            image_path=request.image1_path,
            vae_model_name=request.vae_model_name,
            upscale_method=request.upscale_method,
            megapixels=request.megapixels,
        ),
        ctx,
        field="image1_path",
    )
    positive, negative = encode_conditions(
        TextEncodeRequest(
            image1_path=request.image1_path,
            image2_path=request.image2_path,
            image3_path=request.image3_path,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            clip_model_name=request.clip_model_name,
            vae_model_name=request.vae_model_name,
            vae_reference_megapixels=request.vae_reference_megapixels,
            vision_reference_megapixels=request.vision_reference_megapixels,
        ),
        ctx,
        with_negative=settings["cfg"] != 1.0,
    )
    sampled, sampling_meta = sample_with_models(positive, negative, latent, settings, ctx)
    vae_name = request.vae_model_name or ctx.defaults.vae_model_name
    image, decode_ms = decode_latent(sampled, vae_name, ctx)
    path, size, fmt = write_image(image, decode_request, ctx)
    return EditResponse(
        request_id=ctx.request_id,
        image_file_path=path,
        image_shape=[image.height, image.width, 3],
        file_size=size,
        metadata={
            "latent": latent_meta,
            "encoding": positive.metadata,
            "sampling": sampling_meta,
            "decode_ms": decode_ms,
            "output_format": fmt,
            "total_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    )


SERVICE = Service(
    name="edit",
    request_model=EditRequest,
    response_model=EditResponse,
    run=run,
    description="The whole edit pipeline in one call: images + prompt -> edited image.",
)
