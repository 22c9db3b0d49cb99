"""The demo Qwen-Image 2.1 text encoder: a tiny Qwen3-VL with random weights, written as the single
file ComfyUI users hold (``text_encoders/qwen3vl_8b_*.safetensors``), with its tokenizer in the
sidecar folder the loader looks in.

It keeps every constant the loader derives a config with (text heads of 128, 16 vision heads,
16-pixel patches merged 2x2, DeepStack mergers), so the file loads through the code that loads the
8B one, from its shapes alone (no config.json). The keys are in the layout reported for the
published files: the language model as ``model.*``, the vision tower as ``model.visual.*``, the
head as ``lm_head.*`` (the loader reads every layout ComfyUI accepts). The tokenizer is the demo's
byte-level BPE with Qwen's special tokens, plus Qwen3's ``<think>`` pair; its ids are not the real
ones (``<|im_start|>`` is not 151644), which keeps code honest about asking the tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from genserve.models.formats import qwen3_vl
from genserve.models.formats.tokenizer_files import sidecar_folder

DEMO_QWEN21_TEXT_ENCODER = "qwen3vl_8b_bf16.safetensors"
QWEN3_ADDED_TOKENS = ["<think>", "</think>"]
TEXT_LAYERS = 3
VISION_DEPTH = 3
DEEPSTACK_TAPS = 2  # fewer than the text layers, as in the real model (3 of 36)


def demo_tokenizer(seed: int) -> Any:  # -> Qwen2Tokenizer
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    from genserve.models.demo.pipeline import train_demo_tokenizer

    trained = train_demo_tokenizer(seed)
    trained.add_tokens([AddedToken(token, special=False, normalized=False) for token in QWEN3_ADDED_TOKENS])
    return Qwen2Tokenizer(
        tokenizer_object=trained,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )


def demo_config(tokenizer: Any) -> Any:  # -> Qwen3VLConfig
    """Qwen3-VL in miniature: 3 text layers of 2 heads (1 key-value head) of 128, a 3-block vision
    tower of 16 heads tapped twice by DeepStack, a 16x16 learned position grid."""
    from transformers import Qwen3VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in qwen3_vl.TOKENS}
    return Qwen3VLConfig(
        text_config={
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": qwen3_vl.TEXT_HEAD_DIM,
            "vocab_size": len(tokenizer),
            "attention_bias": False,
            "max_position_embeddings": qwen3_vl.MAX_POSITIONS,
            "rms_norm_eps": qwen3_vl.RMS_NORM_EPS,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": qwen3_vl.ROPE_THETA,
                "mrope_section": list(qwen3_vl.MROPE_SECTION),
                "mrope_interleaved": True,
            },
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": VISION_DEPTH,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_heads": qwen3_vl.VISION_HEADS,
            "in_channels": 3,
            "out_hidden_size": 128,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": qwen3_vl.deepstack_indexes(VISION_DEPTH, DEEPSTACK_TAPS),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def comfy_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' keys as the published file spells them (``model.language_model.`` ->
    ``model.``; ``model.visual.`` and ``lm_head.`` kept)."""
    prefix = "model.language_model."
    return {("model." + key[len(prefix) :] if key.startswith(prefix) else key): v for key, v in state.items()}


def build_qwen21_text_encoder(path: Path, seed: int) -> Path:
    """Write the demo file at ``path`` (bf16) and its tokenizer sidecar; returns ``path``."""
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = demo_tokenizer(seed)
    config = demo_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    state = {key: value.detach().to(torch.bfloat16).contiguous() for key, value in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(comfy_layout(state), str(path), metadata={"format": "pt", "genserve_demo": "1"})
    side = sidecar_folder(path)
    side.mkdir(exist_ok=True)
    tokenizer.save_pretrained(side)
    Qwen2VLImageProcessorPil(**qwen3_vl.image_processor_options(config)).save_pretrained(side)
    return path
