"""decoding: latent file -> image file (ComfyUI's VAEDecode -> save)."""

from __future__ import annotations

import time
from typing import Any, Literal

from PIL import Image
from pydantic import Field

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind
from genserve.services.base import RunContext, Service, ServiceModel
from genserve.services.pipeline.imaging import vae_decode
from genserve.services.pipeline.sampling import load_latent
from genserve.storage.artifacts import encode_image, write_bytes

OutputFormat = Literal["jpg", "png", "webp"]


class DecodeRequest(ServiceModel):
    latent_file: str
    vae_model_name: str | None = None
    output_filename: str = Field(
        "image", max_length=200, description="File name stem; the request id is appended."
    )
    output_dir: str | None = None
    output_format: OutputFormat | None = None


class DecodeResponse(ServiceModel):
    status: Literal["success"] = "success"
    request_id: str
    image_file_path: str
    image_shape: list[int]
    file_size: int
    metadata: dict[str, Any] = Field(default_factory=dict)


def decode_latent(latent, vae_name: str, ctx: RunContext) -> tuple[Image.Image, float]:  # shared with edit
    started = time.perf_counter()
    if latent.shape[0] != 1:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"latent_file: a batch of {latent.shape[0]} latents; a decode writes one image, so send "
            "one [1, C, 1, H, W] latent per request",
            field="latent_file",
        )
    with ctx.use_model(ModelKind.VAE, vae_name, "vae_model_name") as vae:
        ctx.check_cancelled()
        if latent.shape[1] != vae.config.z_dim:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"latent_file: {latent.shape[1]} latent channels, but {vae_name} decodes {vae.config.z_dim}",
                field="latent_file",
            )
        try:
            image = vae_decode(vae, latent)
        except Exception as exc:
            raise GenserveError(
                ErrorCode.DECODING_FAILED, f"VAE decoding failed: {type(exc).__name__}: {exc}"
            ) from exc
    return image, round((time.perf_counter() - started) * 1000, 3)


def write_image(image: Image.Image, request: DecodeRequest, ctx: RunContext) -> tuple[str, int, str]:
    output_dir = ctx.sandbox.output_dir(request.output_dir)
    stem = ctx.sandbox.output_name(request.output_filename, "output_filename")
    fmt = request.output_format or ctx.defaults.output_format
    path = output_dir / f"{stem}_{ctx.file_tag}.{fmt}"
    try:
        data = encode_image(image, fmt, quality=ctx.defaults.jpeg_quality)
    except (OSError, ValueError) as exc:
        raise GenserveError(
            ErrorCode.DECODING_FAILED,
            f"could not encode the {image.width}x{image.height} image as {fmt}: {exc}",
            field="output_format",
        ) from exc
    write_bytes(path, data, durable=True)
    size = len(data)
    return str(path), size, fmt


def run(request: DecodeRequest, ctx: RunContext) -> DecodeResponse:
    ctx.sandbox.output_dir(request.output_dir)
    ctx.sandbox.output_name(request.output_filename, "output_filename")
    latent, _ = load_latent(request.latent_file, "latent_file", ctx)
    vae_name = request.vae_model_name or ctx.defaults.vae_model_name
    image, decode_ms = decode_latent(latent, vae_name, ctx)
    path, size, fmt = write_image(image, request, ctx)
    return DecodeResponse(
        request_id=ctx.request_id,
        image_file_path=path,
        image_shape=[image.height, image.width, 3],
        file_size=size,
        metadata={"vae_model_name": vae_name, "output_format": fmt, "decode_ms": decode_ms},
    )


SERVICE = Service(
    name="decoding",
    request_model=DecodeRequest,
    response_model=DecodeResponse,
    run=run,
    description="VAE-decode a latent file to a jpg, png or webp image.",
)
