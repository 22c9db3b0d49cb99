"""ComfyUI's single-file Qwen-Image transformers (Qwen-Image, -Edit, -Edit-2509, -Edit-2511):
their key layout and the config a file implies.

ComfyUI's module names are diffusers' ``QwenImageTransformer2DModel`` names, with bare keys or
under ``model.diffusion_model.``. The file holds no config, so it is derived from the tensors'
shapes plus the architecture's fixed constants (2x2 patches, a head dim of 128, rope axes
16/56/56): a smaller file of the same architecture (genserve's demo) loads through the same code
as the 20B one. Edit-2511 files carry a marker key ``__index_timestep_zero__``; Qwen-Image-Layered
files have ``time_text_embed.addition_t_embedding`` (and use layer-wise rope with it).
"""

from __future__ import annotations

import re
from typing import Any

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats.safetensors_header import Header

PREFIX = "model.diffusion_model."
PATCH_SIZE = 2
HEAD_DIM = 128
ROPE_AXES = (16, 56, 56)
ZERO_COND_MARKER = "__index_timestep_zero__"
LAYERED_KEY = "time_text_embed.addition_t_embedding.weight"
_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")
# Modules that fp8 storage leaves in the compute dtype (diffusers' default skip list for layerwise
# casting): small, and where fp8's error would show. The rest of the Linear layers store fp8.
FP8_WIDE = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$")


def fp8_stored(header: Header, wide: tuple[str, ...] = FP8_WIDE) -> set[str]:
    """The tensors (file keys) that fp8 storage keeps in fp8: the weights and biases of every Linear
    (2-D weight) layer, unless it or a module around it matches ``wide`` (the model's FP8_WIDE)."""
    modules = {
        model_key(k)[: -len(".weight")]
        for k, t in header.tensors.items()
        if k.endswith(".weight") and len(t.shape) == 2
    }
    narrow = {m for m in modules if not _wide(m, wide)}
    return {k for k in header.tensors if model_key(k).rpartition(".")[0] in narrow}


def _wide(module: str, wide: tuple[str, ...]) -> bool:
    parts = module.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(re.search(pattern, name) for pattern in wide for name in names)


def is_qwen_transformer(header: Header) -> bool:
    """ComfyUI's own test: ``txt_norm.weight`` (with ``img_in``), bare or prefixed."""
    keys = header.tensors
    return any(f"{p}txt_norm.weight" in keys and f"{p}img_in.weight" in keys for p in ("", PREFIX))


def model_key(key: str) -> str:
    """A file key as the diffusers module names it (the ComfyUI prefix stripped)."""
    return key[len(PREFIX) :] if key.startswith(PREFIX) else key


def derive_config(header: Header, field_name: str = "unet_model_name") -> dict[str, Any]:
    """``QwenImageTransformer2DModel`` arguments from the file's shapes and the fixed constants."""
    shapes = {model_key(k): info.shape for k, info in header.tensors.items()}
    try:
        inner, in_channels = shapes["img_in.weight"]
        joint = shapes["txt_in.weight"][1]
        out_rows = shapes["proj_out.weight"][0]
    except (KeyError, ValueError):
        raise _not_qwen(header, field_name) from None
    blocks = {int(m.group(1)) for key in shapes if (m := _BLOCK.match(key))}
    if inner % HEAD_DIM or out_rows % (PATCH_SIZE * PATCH_SIZE) or not blocks:
        raise _not_qwen(header, field_name)
    return {
        "patch_size": PATCH_SIZE,
        "in_channels": in_channels,
        "out_channels": out_rows // (PATCH_SIZE * PATCH_SIZE),
        "num_layers": max(blocks) + 1,
        "attention_head_dim": HEAD_DIM,
        "num_attention_heads": inner // HEAD_DIM,
        "joint_attention_dim": joint,
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in shapes,
        "axes_dims_rope": ROPE_AXES,
        "zero_cond_t": ZERO_COND_MARKER in shapes,
        # Qwen-Image-Layered: an RGB/layer embedding added to the timestep's, and layer-wise rope.
        "use_additional_t_cond": LAYERED_KEY in shapes,
        "use_layer3d_rope": LAYERED_KEY in shapes,
    }


def _not_qwen(header: Header, field_name: str) -> GenserveError:
    return GenserveError(
        ErrorCode.MODEL_NOT_FOUND,
        f"{field_name}: {header.path.name} is not a Qwen-Image transformer (its tensors do not have "
        f"the shapes of one: img_in, txt_in, proj_out and transformer_blocks with a head dim of {HEAD_DIM})",
        field=field_name,
    )
