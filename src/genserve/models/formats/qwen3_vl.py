"""ComfyUI's single-file Qwen3-VL text encoders (``qwen3vl_8b_bf16.safetensors``, the fp8 and
int8_convrot variants), which Qwen-Image 2.1 conditions on: how to tell them, their keys as
transformers names them, and the config the file implies.

ComfyUI tells a Qwen3-VL file by its DeepStack mergers (``model.visual.deepstack_merger_list``),
which no other vision-language model has. Its published files use transformers' current layout
(``model.language_model.*``, ``model.visual.*``, ``lm_head.*``); ComfyUI itself renames those to
``model.*`` / ``visual.*`` / ``model.lm_head.*``, and a file saved from it, or converted by other
tools, may use any mix of the two. Every one of those spellings is read here, so the lookups below
work on canonical (transformers) names whatever the file says.

The file holds no config: one comes from a ``config.json`` beside the tokenizer when there is one
(the caller's choice), else from the shapes plus Qwen3-VL's fixed constants (a text head dim of
128, 16 vision heads, interleaved mrope sections 24/20/20 at theta 5e6, DeepStack taps at
the published blocks), so the 8B file and a tiny demo of the same architecture load through the
same code. The special tokens' ids come from the tokenizer, never from constants.
"""

from __future__ import annotations

import math
import re
from typing import Any

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats.qwen_vl import TOKENS  # the Qwen chat and vision tokens
from genserve.models.formats.safetensors_header import Header

TEXT_HEAD_DIM = 128
VISION_HEADS = 16
MROPE_SECTION = [24, 20, 20]
ROPE_THETA = 5_000_000.0
RMS_NORM_EPS = 1e-6
MAX_POSITIONS = 262_144
# The blocks whose features DeepStack feeds into the first language-model layers, as Qwen
# publishes them per vision depth (2B/4B: 24 blocks; 8B/32B: 27 blocks). The taps are not in the
# shapes; another depth (a demo) takes evenly spaced ones.
PUBLISHED_DEEPSTACK = {24: [5, 11, 17], 27: [8, 16, 24]}
# ComfyUI's image preprocessing for Qwen3-VL (qwen3vl.py, qwen_vl.py): mean and std 0.5, the
# Qwen2-VL pixel bounds; the vision tower's patch and merge sizes come from the config.
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]
MIN_PIXELS = 3136
MAX_PIXELS = 12_845_056

DEEPSTACK_KEY = "model.visual.deepstack_merger_list.0.norm.weight"
EMBED_KEY = "model.language_model.embed_tokens.weight"
PATCH_KEY = "model.visual.patch_embed.proj.weight"
_LAYER = re.compile(r"^model\.language_model\.layers\.(\d+)\.")
_BLOCK = re.compile(r"^model\.visual\.blocks\.(\d+)\.")
_DEEPSTACK = re.compile(r"^model\.visual\.deepstack_merger_list\.(\d+)\.")


def model_key(key: str) -> str:
    """A file key as transformers 5 names it in ``Qwen3VLForConditionalGeneration``, from either
    layout (or ComfyUI's own ``model.lm_head``); anything else is kept, so the strict load refuses it."""
    if key.startswith(("model.language_model.", "model.visual.", "lm_head.")):
        return key
    if key.startswith("model.lm_head."):
        return key[len("model.") :]
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    return key


def canonical_names(header: Header) -> dict[str, str]:
    """Canonical name -> the file's key, for looking shapes up whatever the file's layout."""
    return {model_key(key): key for key in header.names()}


def is_qwen3_vl(header: Header) -> bool:
    """A Qwen3-VL text encoder: a language model, a vision tower, and DeepStack mergers."""
    names = canonical_names(header)
    return all(key in names for key in (DEEPSTACK_KEY, EMBED_KEY, PATCH_KEY))


def deepstack_indexes(depth: int, count: int) -> list[int]:
    """The vision blocks DeepStack taps: the published ones for a published depth, else
    ``count`` blocks spread evenly (the demo's rule, so its file derives its own config)."""
    published = PUBLISHED_DEEPSTACK.get(depth)
    if published is not None and len(published) == count:
        return list(published)
    return [(i + 1) * depth // (count + 1) for i in range(count)]


def derive_config(header: Header, tokenizer: Any, field_name: str = "clip_model_name") -> Any:
    """A ``Qwen3VLConfig`` from the shapes, the constants and the tokenizer's special tokens."""
    from transformers import Qwen3VLConfig

    names = canonical_names(header)
    try:
        text = text_config(header, names)
        vision = vision_config(header, names)
    except (KeyError, ValueError, ZeroDivisionError):
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {header.path.name} does not have the shapes of a Qwen3-VL text encoder "
            f"(heads of {TEXT_HEAD_DIM} in the language model, {VISION_HEADS} heads in the vision tower)",
            field=field_name,
        ) from None
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in TOKENS}
    text.update(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None)
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def text_config(header: Header, names: dict[str, str]) -> dict[str, Any]:
    """The language model's config; ``names`` from ``canonical_names``."""

    def shape(key: str) -> tuple[int, ...]:
        return header.shape(names[key])

    vocab, hidden = shape(EMBED_KEY)
    layers = {int(m.group(1)) for key in names if (m := _LAYER.match(key))}
    attention = "model.language_model.layers.0.self_attn"
    heads, kv_heads = (shape(f"{attention}.{p}_proj.weight")[0] for p in ("q", "k"))
    if heads % TEXT_HEAD_DIM or kv_heads % TEXT_HEAD_DIM or not layers:
        raise ValueError("not a Qwen3-VL language model")
    if shape(f"{attention}.q_norm.weight") != (TEXT_HEAD_DIM,):
        raise ValueError("not a Qwen3 attention (per-head q_norm)")
    return {
        "hidden_size": hidden,
        "intermediate_size": shape("model.language_model.layers.0.mlp.gate_proj.weight")[0],
        "num_hidden_layers": max(layers) + 1,
        "num_attention_heads": heads // TEXT_HEAD_DIM,
        "num_key_value_heads": kv_heads // TEXT_HEAD_DIM,
        "head_dim": TEXT_HEAD_DIM,
        "vocab_size": vocab,
        "attention_bias": f"{attention}.q_proj.bias" in names,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": ROPE_THETA,
            "mrope_section": list(MROPE_SECTION),
            "mrope_interleaved": True,
        },
    }


def vision_config(header: Header, names: dict[str, str]) -> dict[str, Any]:
    """The vision tower's config; ``names`` from ``canonical_names``."""

    def shape(key: str) -> tuple[int, ...]:
        return header.shape(names[key])

    hidden, channels, temporal, patch, _ = shape(PATCH_KEY)
    depth = max(int(m.group(1)) for key in names if (m := _BLOCK.match(key))) + 1
    taps = max(int(m.group(1)) for key in names if (m := _DEEPSTACK.match(key))) + 1
    merged = shape("model.visual.merger.linear_fc1.weight")[1]
    merge = math.isqrt(merged // hidden)
    positions = shape("model.visual.pos_embed.weight")[0]
    if hidden % VISION_HEADS or merge * merge * hidden != merged or math.isqrt(positions) ** 2 != positions:
        raise ValueError("not a Qwen3-VL vision tower")
    return {
        "depth": depth,
        "hidden_size": hidden,
        "intermediate_size": shape("model.visual.blocks.0.mlp.linear_fc1.weight")[0],
        "num_heads": VISION_HEADS,
        "in_channels": channels,
        "out_hidden_size": shape("model.visual.merger.linear_fc2.weight")[0],
        "patch_size": patch,
        "spatial_merge_size": merge,
        "temporal_patch_size": temporal,
        "num_position_embeddings": positions,
        "deepstack_visual_indexes": deepstack_indexes(depth, taps),
    }


def image_processor_options(config: Any) -> dict[str, Any]:
    """The PIL image processor's settings: ComfyUI's preprocessing for this vision tower (bilinear,
    as ComfyUI resizes an image outside the pixel bounds)."""
    from transformers.image_utils import PILImageResampling

    vision = config.vision_config
    return {
        "resample": PILImageResampling.BILINEAR,
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "merge_size": vision.spatial_merge_size,
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    }
