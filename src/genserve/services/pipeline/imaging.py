"""Image sizing and the tensor layouts the Qwen-Image VAE and transformer expect.

The VAE latent is 5-D ``[B, 16, 1, H/8, W/8]`` and is stored normalised with the VAE's
``latents_mean``/``latents_std`` (the space the transformer works in). The transformer sees it
packed into 2x2 patches: ``[B, (H/16)*(W/16), 64]``.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from PIL import Image

from genserve.errors import ErrorCode, GenserveError
from genserve.models.loaders.vae import Vae

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
# Output sides: a multiple of 16 would do (8x VAE compression, 2x2 patches); 32 is diffusers' rule
# for the output size and the text encoder's for reference images, so that with the default
# settings the image to edit is encoded once for both.
LATENT_MULTIPLE = 32


def dimensions_for_area(area: float, width: int, height: int, multiple: int) -> tuple[int, int]:
    """(width, height) with about ``area`` pixels, the source's aspect ratio, multiples of ``multiple``."""
    ratio = width / height
    new_width = math.sqrt(area * ratio)
    new_height = new_width / ratio
    return (
        max(multiple, round(new_width / multiple) * multiple),
        max(multiple, round(new_height / multiple) * multiple),
    )


def fitted_dimensions(area: float, image: Image.Image, multiple: int, field: str) -> tuple[int, int]:
    """``dimensions_for_area``, refusing an image so elongated that the ``multiple``-pixel floor on
    its short side would more than double the area asked for (an 8000x1 strip at 0.02 MP would
    come out 12640x32): the result would no longer honour the megapixels setting."""
    width, height = dimensions_for_area(area, image.width, image.height, multiple)
    if width * height > 2 * area:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: a {image.width}x{image.height} image is too elongated to scale to "
            f"{area / 1e6:.3g} MP with sides a multiple of {multiple} (it would be {width}x{height})",
            field=field,
        )
    return width, height


def resize(image: Image.Image, size: tuple[int, int], method: str = "lanczos") -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, resample=RESAMPLE[method])


def to_vae_input(
    image: Image.Image, device: torch.device, dtype: torch.dtype, channels: int = 3
) -> torch.Tensor:
    """Image -> ``[1, channels, 1, H, W]`` in [-1, 1]: RGB, or RGBA for Qwen-Image-Layered's VAE
    (an image without alpha is opaque)."""
    array = np.asarray(image.convert("RGBA" if channels == 4 else "RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    return (tensor * 2.0 - 1.0).unsqueeze(2).to(device=device, dtype=dtype)


def from_vae_output(decoded: torch.Tensor) -> Image.Image:
    """``[1, 3 or 4, H, W]`` in [-1, 1] -> RGB (RGBA) image, rounded as diffusers' image processor does."""
    array = (decoded[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((array * 255).round().astype(np.uint8), "RGBA" if array.shape[-1] == 4 else "RGB")


def latent_stats(vae: torch.nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    channels = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1).to(like.device, like.dtype)
    std = torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1).to(like.device, like.dtype)
    return mean, std


@torch.no_grad()
def vae_encode(vae: Vae, image: Image.Image) -> torch.Tensor:
    """Image -> normalised latent ``[1, 16, 1, H/8, W/8]`` on CPU, float32.

    The distribution's mode, so deterministic: an encoding of the same pixels is served from
    the VAE's cache.
    """
    key = (image.size, hashlib.sha1(image.tobytes()).hexdigest())
    cached = vae.encodings.get(key)
    if cached is not None:
        return cached
    module = vae.module
    param = next(module.parameters())
    pixels = to_vae_input(image, param.device, param.dtype, module.config.input_channels)
    latent = module.encode(pixels).latent_dist.mode()
    mean, std = latent_stats(module, latent)
    normalised = ((latent - mean) / std).cpu().float()
    vae.encodings.put(key, normalised)
    return normalised


@torch.no_grad()
def vae_decode(vae: Vae, latent: torch.Tensor) -> Image.Image:
    module = vae.module
    param = next(module.parameters())
    latent = latent.to(device=param.device, dtype=param.dtype)
    mean, std = latent_stats(module, latent)
    decoded = module.decode(latent * std + mean, return_dict=False)[0][:, :, 0]
    return from_vae_output(decoded)


def pack(latent: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, H, W]`` -> ``[B, F*(H/2)*(W/2), C*4]``: each frame's 2x2 patches, frame after
    frame (a layered latent's layers, as diffusers' layered pipeline packs them)."""
    batch, channels, frames, height, width = latent.shape
    patches = latent.reshape(batch, channels, frames, height // 2, 2, width // 2, 2)
    patches = patches.permute(0, 2, 3, 5, 1, 4, 6)
    return patches.reshape(batch, frames * (height // 2) * (width // 2), channels * 4)


def unpack(packed: torch.Tensor, height: int, width: int, frames: int = 1) -> torch.Tensor:
    """Inverse of ``pack`` for ``frames`` frames of ``height`` x ``width`` (latent pixels)."""
    batch, _, features = packed.shape
    channels = features // 4
    latent = packed.view(batch, frames, height // 2, width // 2, channels, 2, 2).permute(0, 4, 1, 2, 5, 3, 6)
    return latent.reshape(batch, channels, frames, height, width)


def to_patch_grid(latent: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, H, W]`` padded circularly to even H and W (unchanged when already even), as
    ComfyUI's Qwen model pads a latent to its 2x2 patches."""
    batch, channels, frames, height, width = latent.shape
    if not height % 2 and not width % 2:
        return latent
    flat = latent.reshape(batch, channels * frames, height, width)
    padded = torch.nn.functional.pad(flat, (0, width % 2, 0, height % 2), mode="circular")
    return padded.reshape(batch, channels, frames, *padded.shape[-2:])


def center_crop(batch: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[..., H, W]`` cut from the centre to the aspect ratio of ``width`` x ``height``, as
    ComfyUI's ``common_upscale(crop="center")`` does before it scales."""
    old_h, old_w = batch.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return batch[..., y : old_h - y, x : old_w - x]
