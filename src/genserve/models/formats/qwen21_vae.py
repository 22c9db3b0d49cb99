"""Qwen-Image 2.1's VAE as ComfyUI ships it (``vae/qwen_image_2.1_vae_bf16.safetensors``).

The keys are the original Wan-2.2 VAE names, which ComfyUI loads into its ``vae2_2.WanVAE``:
``encoder.conv1``, ``encoder.downsamples.{level}.downsamples.{block}.residual.{0,2,3,6}`` (a
level's residual blocks, then its ``resample.1`` and, on the temporal levels, ``time_conv``),
``encoder.middle.{0,1,2}``, ``encoder.head.{0,2}``, ``conv1``/``conv2`` (quant and post-quant),
and the decoder's mirror (``decoder.upsamples.{level}.upsamples.{block}``). The causal-3-D
convolutions are stored 5-D with a temporal depth of 1 (the file is 644 MiB in bf16, the 2-D
network's 337.7 M parameters); a single image only ever meets a kernel's last temporal tap, so
``to_module`` takes that tap, whatever the depth, and the module stays 2-D.

The Qwen-Image (2509/Edit/Layered) VAE is the Wan-2.1 layout (``wan_vae``): its decoder levels
are flat (``decoder.upsamples.N.residual``), here they nest (``decoder.upsamples.N.upsamples.M``).
The Wan-2.2 video VAE nests too but patchifies RGB 2x2 (12 channels in) into 48 latent channels;
this file takes 3 or 4 channels as they are and has 64. Those three facts, from the tensors, tell
the files apart, never the file's name. The config comes from the shapes, so a tiny demo file and
the real one load through the same code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.arch.qwen21_vae import Qwen21VaeConfig
from genserve.models.formats.safetensors_header import Header

ENCODER_LEVEL = "encoder.downsamples.{level}.downsamples"
DECODER_LEVEL = "decoder.upsamples.{level}.upsamples"
NESTED_MARKER = "decoder.upsamples.0.upsamples.0.residual.0.gamma"  # Wan-2.2 layout (2.1's is flat)
IMAGE_CHANNELS = (3, 4)
# Convolutions the original holds as 2-D (the rest are causal 3-D): the resamplers' and attention's.
_PLAIN_2D = (".resample.1.weight", ".to_qkv.weight", ".proj.weight")
_ATTENTION_NORM = ".norm.gamma"  # the middle's attention norm is the image (C, 1, 1) kind


def is_qwen21_vae(header: Header) -> bool:
    """The nested (Wan-2.2) layout taking images as they are (3 or 4 channels, not patchified).
    Whether it is whole, with Qwen-Image 2.1's 64 latent channels, is ``derive_config``'s to
    check, so a damaged file is refused as one rather than taken for another kind."""
    if not (header.has(NESTED_MARKER) and header.has("encoder.conv1.weight")):
        return False
    shape = header.shape("encoder.conv1.weight")
    return len(shape) >= 2 and shape[1] in IMAGE_CHANNELS


def derive_config(header: Header, field_name: str = "vae_model_name") -> Qwen21VaeConfig:
    """The config the file's shapes imply; a file whose parts disagree (truncated, another model's
    levels) is refused naming ``field_name``."""
    try:
        return _derive(header)
    except (KeyError, IndexError, ValueError) as exc:
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {header.path.name} is not a whole Qwen-Image 2.1 VAE ({_reason(exc)})",
            field=field_name,
        ) from None


def _derive(header: Header) -> Qwen21VaeConfig:
    base_dim, input_channels = header.shape("encoder.conv1.weight")[:2]
    z_dim = header.shape("conv2.weight")[0]
    decoder_base_dim = header.shape("decoder.head.0.gamma")[0]
    output_channels = header.shape("decoder.head.2.weight")[0]
    levels = _count(header, lambda i: f"{ENCODER_LEVEL.format(level=i)}.0.residual.0.gamma")
    blocks = _count(header, lambda j: f"{ENCODER_LEVEL.format(level=0)}.{j}.residual.0.gamma")
    if not levels or not blocks:
        raise ValueError("no encoder levels")
    widths = [
        header.shape(f"{ENCODER_LEVEL.format(level=i)}.{blocks - 1}.residual.6.weight")[0]
        for i in range(levels)
    ]
    if any(width % base_dim for width in widths):
        raise ValueError(f"encoder widths {widths} are not multiples of {base_dim}")
    dim_mult = tuple(width // base_dim for width in widths)
    temporal = tuple(
        header.has(f"{ENCODER_LEVEL.format(level=i)}.{blocks}.time_conv.weight") for i in range(levels - 1)
    )
    config = Qwen21VaeConfig(
        base_dim=base_dim,
        decoder_base_dim=decoder_base_dim,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=blocks,
        temperal_downsample=temporal,
        input_channels=input_channels,
        output_channels=output_channels,
    )
    _check(header, config)
    return config


def _check(header: Header, config: Qwen21VaeConfig) -> None:
    """What a truncated or mixed file gets wrong and the derivation does not read: the latent
    widths, the decoder's levels and its temporal levels mirroring the encoder's."""
    if config.z_dim != len(config.latents_mean):
        raise ValueError(f"{config.z_dim} latent channels, Qwen-Image 2.1 has {len(config.latents_mean)}")
    if header.shape("encoder.head.2.weight")[0] != 2 * config.z_dim:
        raise ValueError("encoder.head.2 does not give a mean and a variance per latent channel")
    if config.input_channels not in IMAGE_CHANNELS or config.output_channels != config.input_channels:
        raise ValueError(f"{config.input_channels} channels in, {config.output_channels} out")
    levels = len(config.dim_mult)
    if _count(header, lambda i: f"{DECODER_LEVEL.format(level=i)}.0.residual.0.gamma") != levels:
        raise ValueError(f"the decoder's levels are not the encoder's {levels}")
    for level in range(levels):
        up = DECODER_LEVEL.format(level=level)
        if not header.has(f"{up}.{config.num_res_blocks}.residual.6.weight"):
            raise ValueError(f"{up} lacks its residual block {config.num_res_blocks}")
        resample = f"{up}.{config.num_res_blocks + 1}"
        if header.has(f"{resample}.resample.1.weight") != (level < levels - 1):
            raise ValueError(f"{resample}.resample.1 is missing or extra")
        if header.has(f"{resample}.time_conv.weight") != config.up_temporal(level):
            raise ValueError("the decoder's temporal levels do not mirror the encoder's")
    if header.shape("decoder.conv1.weight")[:2] != (config.decoder_dims()[0], config.z_dim):
        raise ValueError("decoder.conv1 does not take the latent to the decoder's width")


def _count(header: Header, key: Callable[[int], str]) -> int:
    count = 0
    while header.has(key(count)):
        count += 1
    return count


def _reason(exc: BaseException) -> str:
    return f"no {exc.args[0]}" if isinstance(exc, KeyError) else str(exc)


def to_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's tensors as the 2-D module holds them: a causal convolution's last temporal tap
    (the only one a single frame meets), every norm's gain as ``(C, 1, 1)``."""
    out = {}
    for key, value in state.items():
        if value.dim() == 5:
            value = value[:, :, -1]
        elif key.endswith(".gamma"):
            value = value.reshape(-1, 1, 1)
        out[key] = value
    return out


def from_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The module's tensors as the file holds them (the demo's writer; ``to_module`` undoes it)."""
    out = {}
    for key, value in state.items():
        if value.dim() == 4 and not key.endswith(_PLAIN_2D):
            value = value.unsqueeze(2)
        elif key.endswith(".gamma") and not key.endswith(_ATTENTION_NORM):
            value = value.reshape(-1, 1, 1, 1)
        out[key] = value
    return out
