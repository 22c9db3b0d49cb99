"""The Qwen-Image VAE as a single file in the Wan-2.1 layout (``qwen_image_vae.safetensors``).

``AutoencoderKLQwenImage`` has no single-file loader, but its keys are ``AutoencoderKLWan``'s:
diffusers' own ``convert_wan_vae_to_diffusers`` turns the file into a state dict that loads
exactly. The conversion assumes the real layout (two res blocks per level, four levels); the
file holds no config, so the width and latent channels come from the shapes, and the latents'
mean and std are the Qwen-Image values (diffusers' defaults), which the file does not carry.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats.safetensors_header import Header

MARKER = "decoder.middle.0.residual.0.gamma"  # ComfyUI's own test for this layout
DIM_MULT = [1, 2, 4, 4]
NUM_RES_BLOCKS = 2
TEMPORAL_DOWNSAMPLE = [False, True, True]


def is_wan_vae(header: Header) -> bool:
    return header.has(MARKER) and header.has("encoder.conv1.weight")


def derive_config(header: Header, field_name: str = "vae_model_name") -> dict[str, Any]:
    try:
        base_dim, channels = header.shape("encoder.conv1.weight")[:2]
        z_dim = header.shape("conv2.weight")[0]
    except KeyError:
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {header.path.name} is not a Qwen-Image VAE in the Wan layout "
            "(encoder.conv1 and conv2 weights missing)",
            field=field_name,
        ) from None
    return {
        "base_dim": base_dim,
        "z_dim": z_dim,
        "dim_mult": DIM_MULT,
        "num_res_blocks": NUM_RES_BLOCKS,
        "temperal_downsample": TEMPORAL_DOWNSAMPLE,
        "input_channels": channels,  # 3 (RGB), or 4 for Qwen-Image-Layered's RGBA VAE
    }


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return dict(convert_wan_vae_to_diffusers(state))


# -- the other way, for the demo set: a diffusers VAE written as ComfyUI users have it ------------

_RESIDUAL = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
             "conv2": "residual.6", "conv_shortcut": "shortcut"}  # fmt: skip
_FIXED = {
    "encoder.conv_in": "encoder.conv1",
    "decoder.conv_in": "decoder.conv1",
    "encoder.norm_out.gamma": "encoder.head.0.gamma",
    "encoder.conv_out": "encoder.head.2",
    "decoder.norm_out.gamma": "decoder.head.0.gamma",
    "decoder.conv_out": "decoder.head.2",
    "quant_conv": "conv1",
    "post_quant_conv": "conv2",
}


def from_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKLQwenImage`` state dict in the Wan-2.1 layout (the exact inverse
    of ``to_diffusers``; ``models demo --formats`` checks the round trip)."""
    return {_wan_key(key): value for key, value in state.items()}


def _wan_key(key: str) -> str:
    for old, new in _FIXED.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    if found := re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)$", key):
        side, index, rest = found.groups()
        return f"{side}.middle.{int(index) * 2}.{_residual(rest)}"
    if found := re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", key):
        return f"{found.group(1)}.middle.1.{found.group(2)}"
    if found := re.match(r"^encoder\.down_blocks\.(\d+)\.(.+)$", key):
        return f"encoder.downsamples.{found.group(1)}.{_residual(found.group(2))}"
    if found := re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
        block, resnet, rest = (int(found.group(1)), int(found.group(2)), found.group(3))
        if block == 1 and resnet == 0 and rest.startswith("conv_shortcut."):
            return f"decoder.upsamples.4.shortcut.{rest[len('conv_shortcut.') :]}"
        return f"decoder.upsamples.{block * (NUM_RES_BLOCKS + 2) + resnet}.{_residual(rest)}"
    if found := re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key):
        block = int(found.group(1))
        return f"decoder.upsamples.{block * (NUM_RES_BLOCKS + 2) + NUM_RES_BLOCKS + 1}.{found.group(2)}"
    return key


def _residual(rest: str) -> str:
    for old, new in _RESIDUAL.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest
