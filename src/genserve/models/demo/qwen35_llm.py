"""The demo Qwen-Image 2.1 prompt enhancer: a tiny Qwen3.5 with random weights, written as the single
file ComfyUI users hold (``text_encoders/qwen3.5_9b_qwen_image_2.1_pe_t2i.int8_convrot.safetensors``
and its bf16 sibling), with its tokenizer in the sidecar folder the loader reads.

It has what the 9B file has, in miniature: three gated-delta-net layers then one gated
full-attention layer, linear-attention key heads as wide as the value heads, heads with a rotary
quarter, a vision tower of 16 heads merged 2x2 into the text width, an untied ``lm_head`` and an
MTP head, in transformers' layout (``model.language_model.*``, ``model.visual.*``, ``lm_head.*``,
``mtp.*``). So it loads through the code that loads the real file, from its shapes alone (no
config.json). The tokenizer is the demo's byte-level BPE with Qwen's special tokens and the
``<think>`` pair, and no chat template: the loader gives it ComfyUI's, as it would a bare tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from genserve.models.formats import int8_convrot, llm_single_file
from genserve.models.formats.tokenizer_files import sidecar_folder

DEMO_QWEN35_LLM = "qwen3.5_9b_qwen_image_2.1_pe_t2i.safetensors"
DEMO_QWEN35_LLM_INT8 = "qwen3.5_9b_qwen_image_2.1_pe_t2i.int8_convrot.safetensors"
LAYERS = 4  # layer 3 is full attention, as every fourth is in the real model
HIDDEN = 64
HEAD_DIM = 32  # 8 rotary dims
VALUE_HEAD_DIM = 16


def demo_config(tokenizer: Any) -> Any:  # -> Qwen3_5Config
    from transformers import Qwen3_5Config

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in llm_single_file.TOKENS}
    return Qwen3_5Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": HEAD_DIM,
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": VALUE_HEAD_DIM,
            "linear_value_head_dim": VALUE_HEAD_DIM,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "max_position_embeddings": llm_single_file.QWEN35_MAX_POSITIONS,
            "rms_norm_eps": llm_single_file.RMS_NORM_EPS,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": llm_single_file.QWEN35_ROPE_THETA,
                "partial_rotary_factor": llm_single_file.PARTIAL_ROTARY,
                "mrope_section": llm_single_file.mrope_section(
                    int(HEAD_DIM * llm_single_file.PARTIAL_ROTARY)
                ),
                "mrope_interleaved": True,
            },
            # Wider than 0.02: tiny random weights at that init make greedy decoding repeat one token.
            "initializer_range": 0.2,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
        },
        vision_config={
            "depth": 2,
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_heads": llm_single_file.VISION_HEADS,
            "out_hidden_size": HIDDEN,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def mtp_head(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The MTP head the published Qwen3.5 checkpoints carry: a full-attention layer shaped like the
    last one, its input projection from twice the width, and three norms (random; never loaded)."""
    generator = torch.Generator().manual_seed(seed)
    last = f"{llm_single_file.LM}layers.{LAYERS - 1}."
    head = {
        "mtp.layers.0." + key[len(last) :]: torch.randn(value.shape, generator=generator) * 0.02
        for key, value in state.items()
        if key.startswith(last)
    }
    head["mtp.fc.weight"] = torch.randn((HIDDEN, 2 * HIDDEN), generator=generator) * 0.02
    for name in ("norm", "pre_fc_norm_embedding", "pre_fc_norm_hidden"):
        head[f"mtp.{name}.weight"] = torch.zeros(HIDDEN)
    return {key: value.to(torch.bfloat16) for key, value in head.items()}


def build_qwen35_llm(path: Path, seed: int, int8: bool = False) -> Path:
    """Write the demo file at ``path`` (bf16; with ``int8``, its projections in ComfyUI's int8
    ConvRot) and its tokenizer sidecar; returns ``path``. A second or two on CPU."""
    from transformers import Qwen3_5ForConditionalGeneration

    from genserve.models.demo.qwen21_text import demo_tokenizer

    tokenizer = demo_tokenizer(seed)
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(demo_config(tokenizer)).eval()
    state = {key: value.detach().to(torch.bfloat16).contiguous() for key, value in model.state_dict().items()}
    state.update(mtp_head(state, seed))
    if int8:
        projections = [
            key for key in state if key.startswith(llm_single_file.LM) and key.endswith("_proj.weight")
        ]
        state = int8_convrot.quantize_state_dict(state, projections)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt", "genserve_demo": "1"})
    side = sidecar_folder(path)
    side.mkdir(exist_ok=True)
    tokenizer.save_pretrained(side)
    return path
