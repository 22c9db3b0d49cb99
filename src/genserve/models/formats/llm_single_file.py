"""ComfyUI's single-file LLMs in ``text_encoders/``: how to tell one, its keys as transformers names
them, and the config its shapes imply.

Qwen-Image 2.1's prompt enhancers (``qwen3.5_9b_qwen_image_2.1_pe_t2i.int8_convrot.safetensors``
and ``..._pe_i2i...``) are Qwen3.5 9B files that ComfyUI's CLIPLoader hands to TextGenerate. ComfyUI
(``comfy/sd.py``) tells Qwen3.5 by ``model.language_model.layers.0.linear_attn.A_log``: a hybrid
of gated-delta-net (linear attention) layers and, every fourth, gated full attention. The published
files use transformers' layout (``model.language_model.*``, ``model.visual.*`` for the vision
tower, ``lm_head.*``, ``mtp.*`` for the multi-token-prediction head); ComfyUI renames them to
``model.*`` / ``visual.*`` / ``model.lm_head.*``, and a file saved from it may use that spelling, so
both are read. A Qwen3 dense file (``model.layers.N.self_attn.q_norm`` with no vision tower and no
linear attention) is a causal LM too; genserve loads no Qwen3 text encoder, so it is one here.

Neither is a text encoder genserve loads (those are Qwen2.5-VL and Qwen3-VL, which have no
``linear_attn`` and always a vision tower), so the ``llm`` kind answers for these files and the
``text_encoders`` kind leaves them out.

The file holds no config. The shapes give the widths, head counts, depth and each layer's type; the
rest is the family's published constants: Qwen3.5's partial rotary factor 0.25 at theta 1e7 with
interleaved mrope sections (11/11/10 for its heads of 256), 16 vision heads, and linear-attention
key heads as wide as its value heads (128 both in every published size); Qwen3's theta 1e6. The
special tokens' ids come from the tokenizer, never from constants.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats import qwen3_vl
from genserve.models.formats.qwen_vl import TOKENS  # the Qwen chat and vision tokens
from genserve.models.formats.safetensors_header import Header, is_safetensors, read_header

QWEN35 = "qwen3.5"
QWEN3 = "qwen3"
LABELS = {QWEN35: "Qwen3.5", QWEN3: "Qwen3"}

PARTIAL_ROTARY = 0.25
QWEN35_ROPE_THETA = 10_000_000.0
QWEN35_MAX_POSITIONS = 262_144
QWEN3_ROPE_THETA = 1_000_000.0
QWEN3_MAX_POSITIONS = 40_960
RMS_NORM_EPS = 1e-6
VISION_HEADS = 16

LM = "model.language_model."
EMBED_KEY = LM + "embed_tokens.weight"
NORM_KEY = LM + "norm.weight"
HEAD_KEY = "lm_head.weight"
PATCH_KEY = "model.visual.patch_embed.proj.weight"
MTP = "mtp."
_LAYER = re.compile(r"^model\.language_model\.layers\.(\d+)\.")
_BLOCK = re.compile(r"^model\.visual\.blocks\.(\d+)\.")
# Layer parts no Qwen3 decoder layer has: Gemma's and OLMo's extra norms (they too have q_norm).
_NOT_QWEN3 = ("post_feedforward_layernorm", "pre_feedforward_layernorm")

# ComfyUI's TextGenerate prompt for Qwen3.5 (comfy/text_encoders/qwen35.py): ChatML, each image as a
# vision block before the user's text, and thinking off (its default) as an empty think block
# opened and closed after the assistant's header. Used when the tokenizer brings no template.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is not defined or not enable_thinking %}{{ '<think>\\n</think>\\n' }}{% endif %}"
    "{% endif %}"
)


@dataclass(frozen=True)
class LlmFile:
    """What a file's tensors say it is: the family, and whether it has a vision tower."""

    family: str
    vision: bool

    @property
    def label(self) -> str:
        return LABELS[self.family] + (" vision-language" if self.vision else "")


def canonical_key(key: str) -> str:
    """A file key as transformers names it in the family's ``...ForConditionalGeneration`` (the
    language model under ``model.language_model.``), from either layout; others are kept as they are."""
    # The spellings are Qwen3-VL's (ComfyUI renames both families alike); the MTP head stays as is.
    return key if key.startswith(MTP) else qwen3_vl.model_key(key)


def canonical_names(header: Header) -> dict[str, str]:
    """Canonical name -> the file's key."""
    return {canonical_key(key): key for key in header.names()}


def detect(header: Header) -> LlmFile | None:
    """The family when the tensors are a whole causal LM of one genserve loads, else None."""
    names = canonical_names(header)
    if EMBED_KEY not in names or NORM_KEY not in names:
        return None
    vision = PATCH_KEY in names
    if LM + "layers.0.linear_attn.A_log" in names:
        return LlmFile(QWEN35, vision)
    layer = LM + "layers.0."
    qwen3 = all(f"{layer}{part}.weight" in names for part in ("self_attn.q_norm", "input_layernorm"))
    foreign = any(
        ".linear_attn." in key or key.startswith("model.visual.") or any(p in key for p in _NOT_QWEN3)
        for key in names
    )
    return LlmFile(QWEN3, False) if qwen3 and not foreign else None


def detect_file(path: Path) -> LlmFile | None:
    """``detect`` for a file on disk; anything unreadable is not an LLM here (its loader says why).
    Cached by size and modification time: the registry asks on every listing."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    return _detect_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _detect_cached(path: str, size: int, mtime_ns: int) -> LlmFile | None:
    file = Path(path)
    try:
        return detect(read_header(file)) if is_safetensors(file) else None
    except (GenserveError, OSError, ValueError):
        return None


def module_key(key: str, kind: LlmFile) -> str | None:
    """The file key as the model built for ``kind`` names it. The MTP head (``mtp.*``) answers None:
    it only drafts tokens for ComfyUI's speculative decoding, which never changes which text is
    likely, and genserve decodes without it, so its weights are not loaded (nor kept in memory)."""
    if key.startswith(MTP):
        return None
    canon = canonical_key(key)
    if not kind.vision and canon.startswith(LM):  # ...ForCausalLM holds the language model as model.*
        return "model." + canon[len(LM) :]
    return canon


def derive_config(header: Header, kind: LlmFile, tokenizer: Any, field_name: str = "model") -> Any:
    """The transformers config of the model ``kind`` names, from the shapes, the family's constants
    and the tokenizer's special tokens."""
    from transformers import Qwen3_5Config, Qwen3_5TextConfig, Qwen3Config

    names = canonical_names(header)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in TOKENS}
    tokens = {"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "bos_token_id": None}
    tied = HEAD_KEY not in names
    try:
        if kind.family == QWEN3:
            return Qwen3Config(**qwen3_text(header, names), **tokens, tie_word_embeddings=tied)
        text = {**qwen35_text(header, names), **tokens}
        if not kind.vision:
            return Qwen3_5TextConfig(**text, tie_word_embeddings=tied)
        return Qwen3_5Config(
            text_config=text,
            vision_config=qwen35_vision(header, names, text["hidden_size"]),
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=tied,
        )
    except (KeyError, ValueError, ZeroDivisionError) as exc:
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{field_name}: {header.path.name} does not have the shapes of a {kind.label} model ({exc})",
            field=field_name,
        ) from None


def _shape(header: Header, names: dict[str, str], key: str) -> tuple[int, ...]:
    if key not in names:
        raise KeyError(f"{key} is missing")
    return header.shape(names[key])


def _layers(names: dict[str, str]) -> int:
    found = {int(m.group(1)) for key in names if (m := _LAYER.match(key))}
    if not found or found != set(range(max(found) + 1)):
        raise ValueError("its layers are not numbered 0..N-1")
    return max(found) + 1


def _exact(value: int, divisor: int, what: str) -> int:
    if divisor <= 0 or value % divisor:
        raise ValueError(f"{what}: {value} is not a multiple of {divisor}")
    return value // divisor


def mrope_section(rotary_dim: int) -> list[int]:
    """Qwen3.5's temporal/height/width split of the rotary frequencies: 11/11/10 for its 64 rotary
    dims (heads of 256); a narrower head (a demo) splits its own half as evenly, the first ones larger."""
    half = rotary_dim // 2
    return [half // 3 + (1 if i < half % 3 else 0) for i in range(3)]


def qwen35_text(header: Header, names: dict[str, str]) -> dict[str, Any]:
    """Qwen3.5's language model: each layer's type from its tensors, full attention's heads from its
    q_norm (the head width) and its gated q_proj (twice the heads), linear attention's from A_log."""

    def shape(key: str) -> tuple[int, ...]:
        return _shape(header, names, key)

    vocab, hidden = shape(EMBED_KEY)
    count = _layers(names)
    types = []
    for i in range(count):
        linear, full = f"{LM}layers.{i}.linear_attn.A_log", f"{LM}layers.{i}.self_attn.q_proj.weight"
        if (linear in names) == (full in names):
            raise ValueError(f"layer {i} is neither linear nor full attention")
        types.append("linear_attention" if linear in names else "full_attention")
    if "full_attention" not in types or "linear_attention" not in types:
        raise ValueError("a Qwen3.5 model has both linear and full attention layers")
    full = f"{LM}layers.{types.index('full_attention')}.self_attn."
    head_dim = shape(full + "q_norm.weight")[0]
    heads = _exact(shape(full + "q_proj.weight")[0], 2 * head_dim, "gated q_proj rows")
    kv_heads = _exact(shape(full + "k_proj.weight")[0], head_dim, "k_proj rows")
    linear = f"{LM}layers.{types.index('linear_attention')}.linear_attn."
    value_dim = shape(linear + "norm.weight")[0]
    value_heads = shape(linear + "A_log")[0]
    if shape(linear + "in_proj_z.weight")[0] != value_heads * value_dim:
        raise ValueError("in_proj_z is not one row per value-head channel")
    qkv = shape(linear + "in_proj_qkv.weight")[0]
    key_heads = _exact(qkv - value_heads * value_dim, 2 * value_dim, "in_proj_qkv's query and key rows")
    rotary = int(head_dim * PARTIAL_ROTARY)
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shape(f"{LM}layers.0.mlp.gate_proj.weight")[0],
        "num_hidden_layers": count,
        "layer_types": types,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "attention_bias": full + "q_proj.bias" in names,
        "linear_conv_kernel_dim": shape(linear + "conv1d.weight")[-1],
        "linear_key_head_dim": value_dim,
        "linear_value_head_dim": value_dim,
        "linear_num_key_heads": key_heads,
        "linear_num_value_heads": value_heads,
        "max_position_embeddings": QWEN35_MAX_POSITIONS,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": QWEN35_ROPE_THETA,
            "partial_rotary_factor": PARTIAL_ROTARY,
            "mrope_section": mrope_section(rotary),
            "mrope_interleaved": True,
        },
    }


def qwen35_vision(header: Header, names: dict[str, str], text_hidden: int) -> dict[str, Any]:
    """Qwen3.5's vision tower: a Qwen3-VL tower without DeepStack, merged into the text width."""

    def shape(key: str) -> tuple[int, ...]:
        return _shape(header, names, key)

    hidden, channels, temporal, patch, _ = shape(PATCH_KEY)
    depth = max(int(m.group(1)) for key in names if (m := _BLOCK.match(key))) + 1
    merge = math.isqrt(shape("model.visual.merger.linear_fc1.weight")[1] // hidden)
    positions = shape("model.visual.pos_embed.weight")[0]
    out = shape("model.visual.merger.linear_fc2.weight")[0]
    if hidden % VISION_HEADS or math.isqrt(positions) ** 2 != positions or out != text_hidden:
        raise ValueError(
            f"the vision tower is not {VISION_HEADS} heads on a square grid merged to the text width"
        )
    return {
        "depth": depth,
        "hidden_size": hidden,
        "intermediate_size": shape("model.visual.blocks.0.mlp.linear_fc1.weight")[0],
        "num_heads": VISION_HEADS,
        "in_channels": channels,
        "out_hidden_size": out,
        "patch_size": patch,
        "spatial_merge_size": merge,
        "temporal_patch_size": temporal,
        "num_position_embeddings": positions,
    }


def qwen3_text(header: Header, names: dict[str, str]) -> dict[str, Any]:
    """Qwen3 dense: the head width from q_norm, the heads from q_proj and k_proj."""

    def shape(key: str) -> tuple[int, ...]:
        return _shape(header, names, key)

    vocab, hidden = shape(EMBED_KEY)
    attention = f"{LM}layers.0.self_attn."
    head_dim = shape(attention + "q_norm.weight")[0]
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shape(f"{LM}layers.0.mlp.gate_proj.weight")[0],
        "num_hidden_layers": _layers(names),
        "num_attention_heads": _exact(shape(attention + "q_proj.weight")[0], head_dim, "q_proj rows"),
        "num_key_value_heads": _exact(shape(attention + "k_proj.weight")[0], head_dim, "k_proj rows"),
        "head_dim": head_dim,
        "attention_bias": attention + "q_proj.bias" in names,
        "max_position_embeddings": QWEN3_MAX_POSITIONS,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": QWEN3_ROPE_THETA},
    }


def model_class(kind: LlmFile) -> Any:
    """The transformers class ``kind`` loads as."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration, Qwen3ForCausalLM

    if kind.family == QWEN3:
        return Qwen3ForCausalLM
    return Qwen3_5ForConditionalGeneration if kind.vision else Qwen3_5ForCausalLM
