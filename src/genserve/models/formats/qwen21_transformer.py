"""Qwen-Image 2.1 diffusion-model files: ComfyUI's single files (``qwen_image_2.1_bf16``,
``..._int8_convrot``, the turbo variants), bare keys or under ``model.diffusion_model.``.

Told from Qwen-Image's files by the text input: 2.1 normalises the prompt before a two-layer
projection (``txt_in.text_norm``, ``txt_in.in_layer``, ``txt_in.out_layer``) where Qwen-Image has
``txt_norm`` and one ``txt_in`` Linear. ComfyUI's files fuse each block's SwiGLU gate and up
projections into ``img_mlp.gate_up`` (gate first); diffusers' layout keeps ``gate_layer`` and
``proj``, which are fused on load. The config comes from the shapes; the rope axes split the head
dim as the real model's 16/56/56 of 128 does (an eighth for the frame axis, the rest halved).
"""

from __future__ import annotations

import re

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.arch.qwen21_transformer import Qwen21Config
from genserve.models.formats.safetensors_header import Header

PREFIX = "model.diffusion_model."
MARKER = "txt_in.text_norm.weight"
_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")
# fp8 storage keeps these in the compute dtype (small, and where fp8's error would show).
FP8_WIDE = ("txt_in", "img_in", "time_text_embed", "modulation", "norm_out", "proj_out", "norm")


def model_key(key: str) -> str:
    return key[len(PREFIX) :] if key.startswith(PREFIX) else key


def is_qwen21_transformer(header: Header) -> bool:
    keys = header.tensors
    return any(f"{p}{MARKER}" in keys and f"{p}img_in.weight" in keys for p in ("", PREFIX))


def derive_config(header: Header, field_name: str = "unet_model_name") -> Qwen21Config:
    shapes = {model_key(k): tuple(info.shape) for k, info in header.tensors.items()}
    try:
        inner, in_channels = shapes["img_in.weight"]
        context_dim = shapes[MARKER][0]
        out_channels = shapes["proj_out.weight"][0]
        head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
        hidden = _mlp_hidden(shapes)
    except (KeyError, ValueError):
        raise _not_qwen21(header, field_name) from None
    blocks = {int(m.group(1)) for key in shapes if (m := _BLOCK.match(key))}
    if not blocks or head_dim % 32 or inner % head_dim:
        raise _not_qwen21(header, field_name)
    frame = head_dim // 8
    return Qwen21Config(
        in_channels=in_channels,
        out_channels=out_channels,
        num_layers=max(blocks) + 1,
        attention_head_dim=head_dim,
        num_attention_heads=inner // head_dim,
        context_in_dim=context_dim,
        mlp_hidden_dim=hidden,
        axes_dims_rope=(frame, (head_dim - frame) // 2, (head_dim - frame) // 2),
        time_bias="time_text_embed.timestep_embedder.linear_1.bias" in shapes,
    )


def _mlp_hidden(shapes: dict[str, tuple[int, ...]]) -> int:
    fused = shapes.get("transformer_blocks.0.img_mlp.gate_up.weight")
    if fused is not None:
        return fused[0] // 2
    return shapes["transformer_blocks.0.img_mlp.proj.weight"][0]


def fuse_mlp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' ``gate_layer`` + ``proj`` -> ComfyUI's ``gate_up`` (gate rows first)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.endswith(".img_mlp.gate_layer.weight"):
            base = key[: -len("gate_layer.weight")]
            out[base + "gate_up.weight"] = torch.cat([tensor, state[base + "proj.weight"]], dim=0)
        elif not key.endswith(".img_mlp.proj.weight"):
            out[key] = tensor
    return out


def _not_qwen21(header: Header, field_name: str) -> GenserveError:
    return GenserveError(
        ErrorCode.MODEL_NOT_FOUND,
        f"{field_name}: {header.path.name} is not a Qwen-Image 2.1 diffusion model (its tensors do not "
        "have the shapes of one: txt_in, img_in, proj_out and transformer_blocks with per-head norms)",
        field=field_name,
    )
