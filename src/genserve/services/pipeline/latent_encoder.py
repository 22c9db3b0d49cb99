"""latent_encoder: image -> VAE latent file (ComfyUI's ImageScaleToTotalPixels -> VAEEncode)."""

from __future__ import annotations

import time
from typing import Any, Literal

from PIL import Image
from pydantic import Field

from genserve.config import UpscaleMethod
from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind
from genserve.services.base import RunContext, Service, ServiceModel
from genserve.services.pipeline.imaging import LATENT_MULTIPLE, fitted_dimensions, resize, vae_encode
from genserve.storage.artifacts import save_tensors
from genserve.storage.images import load_image

LATENT_FORMAT = "genserve.latent/1"


class LatentEncodeRequest(ServiceModel):
    image_path: str = Field(description="Image to encode, inside a read root.")
    vae_model_name: str | None = Field(None, description="VAE under models/vae; default from config.")
    output_dir: str | None = Field(None, description="Folder for the latent file, inside a write root.")
    upscale_method: UpscaleMethod | None = Field(None, description="Resampling for the scale to megapixels.")
    megapixels: float | None = Field(None, gt=0, le=16, description="Target area before encoding, in MP.")


class LatentEncodeResponse(ServiceModel):
    status: Literal["success"] = "success"
    request_id: str
    latent_file_path: str
    latent_shape: list[int]
    metadata: dict[str, Any]


def scale_to_megapixels(
    image: Image.Image, megapixels: float, method: str, field: str = "image_path"
) -> Image.Image:
    """Scale to about ``megapixels`` keeping the aspect ratio, sides a multiple of 32 pixels."""
    size = fitted_dimensions(megapixels * 1_000_000, image, LATENT_MULTIPLE, field)
    return resize(image, size, method)


def encode_image_file(
    request: LatentEncodeRequest, ctx: RunContext, field: str = "image_path"
):  # -> tuple[Tensor, dict]
    """Shared with ``edit``: the latent tensor and its metadata, no file written. ``field`` is
    what the client called the image (``edit`` takes it as ``image1_path``)."""
    defaults = ctx.defaults
    method = request.upscale_method or defaults.upscale_method
    megapixels = request.megapixels or defaults.megapixels
    vae_name = request.vae_model_name or defaults.vae_model_name
    source = load_image(ctx.sandbox, request.image_path, field)
    scaled = scale_to_megapixels(source, megapixels, method, field)
    started = time.perf_counter()
    with ctx.use_model(ModelKind.VAE, vae_name, "vae_model_name") as vae:
        ctx.check_cancelled()
        try:
            latent = vae_encode(vae, scaled)
        except GenserveError:
            raise
        except Exception as exc:
            raise GenserveError(
                ErrorCode.ENCODING_FAILED, f"VAE encoding of {request.image_path} failed: {exc}"
            ) from exc
    metadata = {
        "vae_model_name": vae_name,
        "source_size": list(source.size),
        "scaled_size": list(scaled.size),
        "upscale_method": method,
        "megapixels": megapixels,
        "encode_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    return latent, metadata


def run(request: LatentEncodeRequest, ctx: RunContext) -> LatentEncodeResponse:
    output_dir = ctx.sandbox.output_dir(request.output_dir)
    latent, metadata = encode_image_file(request, ctx)
    path = output_dir / f"latent_{ctx.file_tag}.pt"
    save_tensors(path, {"format": LATENT_FORMAT, "latent": latent, **metadata})
    return LatentEncodeResponse(
        request_id=ctx.request_id,
        latent_file_path=str(path),
        latent_shape=list(latent.shape),
        metadata=metadata,
    )


SERVICE = Service(
    name="latent_encoder",
    request_model=LatentEncodeRequest,
    response_model=LatentEncodeResponse,
    run=run,
    description="Scale an image to a pixel budget and VAE-encode it to a 5-D latent file.",
)
