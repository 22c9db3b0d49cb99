"""ComfyUI's single-file Qwen2.5-VL text encoders (``qwen_2.5_vl_7b_fp8_scaled.safetensors``): the
older transformers key layout, and the config the file implies.

The file holds ``model.*`` (the language model) and ``visual.*`` (the vision tower), the layout
transformers used before ``model.language_model.*`` / ``model.visual.*``; ``lm_head`` may be
missing (the pipeline runs the base model only). It holds no config: one comes from a
``config.json`` beside the tokenizer when there is one, else from the shapes plus Qwen2.5-VL's
fixed constants (a text head dim of 128, a vision head dim of 80, mrope sections 16/24/24,
window attention with a full-attention block every 8th), so a smaller file of the same
architecture loads too. The special tokens' ids come from the tokenizer.
"""

from __future__ import annotations

import math
import re
from typing import Any

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats.safetensors_header import Header

TEXT_HEAD_DIM = 128
VISION_HEAD_DIM = 80
MROPE_SECTION = [16, 24, 24]
FULL_ATTENTION_EVERY = 8
WINDOW_SIZE = 112
ROPE_THETA = 1_000_000.0
RMS_NORM_EPS = 1e-6
MAX_POSITIONS = 128_000
TOKENS = (
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|im_end|>",
    "<|endoftext|>",
)
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_BLOCK = re.compile(r"^visual\.blocks\.(\d+)\.")


def is_old_layout(header: Header) -> bool:
    """ComfyUI's file: ``model.embed_tokens`` and ``visual.patch_embed`` at the top level, and
    Qwen2.5-VL's patch merger (``ln_q``): a Qwen3-VL file in the same layout has none."""
    return (
        header.has("model.embed_tokens.weight")
        and header.has("visual.patch_embed.proj.weight")
        and header.has("visual.merger.ln_q.weight")
    )


def model_key(key: str) -> str:
    """A file key as transformers 5 names it in ``Qwen2_5_VLForConditionalGeneration``."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    return key


def derive_config(header: Header, tokenizer: Any, field_name: str = "clip_model_name") -> Any:
    """A ``Qwen2_5_VLConfig`` from the shapes, the constants and the tokenizer's special tokens."""
    from transformers import Qwen2_5_VLConfig

    try:
        text = _text_config(header)
        vision = _vision_config(header)
    except (KeyError, ValueError, ZeroDivisionError):
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {header.path.name} does not have the shapes of a Qwen2.5-VL text encoder "
            f"(heads of {TEXT_HEAD_DIM} in the language model, of {VISION_HEAD_DIM} in the vision tower)",
            field=field_name,
        ) from None
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in TOKENS}
    text.update(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None)
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _text_config(header: Header) -> dict[str, Any]:
    vocab, hidden = header.shape("model.embed_tokens.weight")
    layers = {int(m.group(1)) for key in header.names() if (m := _LAYER.match(key))}
    heads, kv_heads = (header.shape(f"model.layers.0.self_attn.{p}_proj.weight")[0] for p in ("q", "k"))
    if heads % TEXT_HEAD_DIM or kv_heads % TEXT_HEAD_DIM or not layers:
        raise ValueError("not a Qwen2.5-VL language model")
    return {
        "hidden_size": hidden,
        "intermediate_size": header.shape("model.layers.0.mlp.gate_proj.weight")[0],
        "num_hidden_layers": max(layers) + 1,
        "num_attention_heads": heads // TEXT_HEAD_DIM,
        "num_key_value_heads": kv_heads // TEXT_HEAD_DIM,
        "vocab_size": vocab,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": ROPE_THETA,
        "rope_scaling": {"mrope_section": MROPE_SECTION, "rope_type": "default", "type": "default"},
    }


def _vision_config(header: Header) -> dict[str, Any]:
    hidden, channels, temporal, patch, _ = header.shape("visual.patch_embed.proj.weight")
    depth = max(int(m.group(1)) for key in header.names() if (m := _BLOCK.match(key))) + 1
    merged = header.shape("visual.merger.mlp.0.weight")[1]
    merge = math.isqrt(merged // hidden)
    if hidden % VISION_HEAD_DIM or merge * merge * hidden != merged:
        raise ValueError("not a Qwen2.5-VL vision tower")
    return {
        "depth": depth,
        "hidden_size": hidden,
        "intermediate_size": header.shape("visual.blocks.0.mlp.gate_proj.weight")[0],
        "num_heads": hidden // VISION_HEAD_DIM,
        "in_channels": channels,
        "out_hidden_size": header.shape("visual.merger.mlp.2.weight")[0],
        "patch_size": patch,
        "spatial_merge_size": merge,
        "temporal_patch_size": temporal,
        "window_size": WINDOW_SIZE,
        "fullatt_block_indexes": [
            i for i in range(depth) if i % FULL_ATTENTION_EVERY == FULL_ATTENTION_EVERY - 1
        ],
    }
