"""The Qwen-Image control models ComfyUI users hold, and the config each file implies.

- **InstantX ControlNets** (``controlnet/``: ``Qwen-Image-InstantX-ControlNet-Union`` and
  ``-Inpainting``): diffusers' ``QwenImageControlNetModel`` keys, bare. A few transformer blocks
  copied from the base model, a ``controlnet_x_embedder`` that adds the control latent to the
  image tokens, and one ``controlnet_blocks.N`` Linear per block whose outputs are added to the
  base model's blocks. The inpainting one takes the mask as one more latent channel (68 packed
  inputs instead of 64), as ComfyUI tells them apart.
- **DiffSynth block-wise ControlNets** (``model_patches/``: ``qwen_image_{canny,depth,inpaint}_
  diffsynth_controlnet``): an ``img_in`` Linear over the packed control latent (plus, for
  inpainting, the packed mask) and, per base block, a small block (two RMSNorms, Linear, GELU,
  Linear) whose output is added to that block's image tokens.

No file holds its config: it comes from the tensors' shapes and Qwen-Image's fixed constants, so
genserve's tiny demo files load through the same code as the published ones.
"""

from __future__ import annotations

import re
from typing import Any

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats.qwen_transformer import HEAD_DIM, PATCH_SIZE, ROPE_AXES
from genserve.models.formats.safetensors_header import Header

LATENT_CHANNELS = 16
PACKED = LATENT_CHANNELS * PATCH_SIZE * PATCH_SIZE  # 64: the image tokens' width before img_in
_BLOCK = re.compile(r"^(?:transformer_blocks|controlnet_blocks)\.(\d+)\.")


def is_instantx(header: Header) -> bool:
    """ComfyUI's test for a Qwen InstantX ControlNet: a Qwen block's MLP and ``controlnet_x_embedder``."""
    keys = header.tensors
    return "transformer_blocks.0.img_mlp.net.0.proj.weight" in keys and "controlnet_x_embedder.weight" in keys


def is_fun(header: Header) -> bool:
    """A VideoX-Fun ControlNet: ``control_img_in`` and Qwen blocks under ``control_blocks``."""
    keys = header.tensors
    return "control_img_in.weight" in keys and "control_blocks.0.attn.to_q.weight" in keys


def fun_config(header: Header, field_name: str = "control_net_name") -> dict[str, int]:
    """``FunControlNet`` arguments: input width, model width, heads, blocks."""
    dim, in_features = _shape(header, "control_img_in.weight", field_name)
    head_dim = _shape(header, "control_blocks.0.attn.norm_q.weight", field_name)[0]
    blocks = len({int(k.split(".")[1]) for k in header.tensors if k.startswith("control_blocks.")})
    if not head_dim or dim % head_dim or in_features < PACKED:
        raise _not_control(header, field_name, "its shapes are not a Fun ControlNet's")
    return {
        "in_features": in_features,
        "dim": dim,
        "heads": dim // head_dim,
        "head_dim": head_dim,
        "blocks": blocks,
    }


def is_blockwise(header: Header) -> bool:
    """ComfyUI's test for a DiffSynth block-wise ControlNet patch."""
    return "controlnet_blocks.0.y_rms.weight" in header.tensors and "img_in.weight" in header.tensors


def _shape(header: Header, key: str, field_name: str) -> tuple[int, ...]:
    info = header.tensors.get(key)
    if info is None:
        raise _not_control(header, field_name, f"no {key}")
    return tuple(info.shape)


def _blocks(header: Header, prefix: str) -> int:
    found = {int(m.group(1)) for key in header.tensors if key.startswith(prefix) and (m := _BLOCK.match(key))}
    return max(found) + 1 if found else 0


def instantx_config(header: Header, field_name: str = "control_net_name") -> dict[str, Any]:
    """``QwenImageControlNetModel`` arguments from the file's shapes."""
    inner, in_channels = _shape(header, "img_in.weight", field_name)
    joint = _shape(header, "txt_in.weight", field_name)[1]
    control_in = _shape(header, "controlnet_x_embedder.weight", field_name)[1]
    layers = _blocks(header, "transformer_blocks.")
    if inner % HEAD_DIM or not layers or control_in < in_channels:
        raise _not_control(header, field_name, "its shapes are not a Qwen-Image ControlNet's")
    return {
        "patch_size": PATCH_SIZE,
        "in_channels": in_channels,
        "out_channels": LATENT_CHANNELS,
        "num_layers": layers,
        "attention_head_dim": HEAD_DIM,
        "num_attention_heads": inner // HEAD_DIM,
        "joint_attention_dim": joint,
        "axes_dims_rope": ROPE_AXES,
        "extra_condition_channels": control_in - in_channels,
    }


def blockwise_config(header: Header, field_name: str = "name") -> dict[str, int]:
    """The block-wise patch's sizes: blocks, model width, extra (mask) input width."""
    inner, in_dim = _shape(header, "img_in.weight", field_name)
    blocks = _blocks(header, "controlnet_blocks.")
    if in_dim < PACKED or not blocks:
        raise _not_control(header, field_name, "its shapes are not a block-wise ControlNet's")
    return {"num_layers": blocks, "dim": inner, "additional_in_dim": in_dim - PACKED}


def _not_control(header: Header, field_name: str, why: str) -> GenserveError:
    return GenserveError(
        ErrorCode.MODEL_NOT_FOUND,
        f"{field_name}: {header.path.name} is not a Qwen-Image control model ({why})",
        field=field_name,
    )
