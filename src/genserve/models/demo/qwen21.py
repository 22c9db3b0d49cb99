"""A demo Qwen-Image 2.1 diffusion model, as ComfyUI's single files: ``qwen_image_2.1_bf16``
(bare keys, bf16) and ``qwen_image_2.1_int8_convrot`` (the same weights with the blocks' matrices
in ComfyUI's int8 ConvRot format, keys under ``model.diffusion_model.``).

Tiny (2 blocks, width 256) with random weights; the loader derives its config from the shapes,
as for the real file. The modulation gets a gain: at random-initialisation scale its tanh gates sit
near zero and the prompt would barely reach the pixels, which the tests need to see.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genserve.models.arch.qwen21_transformer import Qwen21Config, Qwen21Transformer
from genserve.models.demo.single_files import write
from genserve.models.formats import int8_convrot
from genserve.models.formats.qwen21_transformer import PREFIX

QWEN21_TRANSFORMER = "qwen_image_2.1_bf16.safetensors"
QWEN21_TRANSFORMER_INT8 = "qwen_image_2.1_int8_convrot.safetensors"
QWEN21_TEXT_ENCODER = "qwen3vl_8b_bf16.safetensors"
QWEN21_VAE = "qwen_image_2.1_vae_bf16.safetensors"
QWEN21_ENHANCER_I2I = "qwen3.5_9b_qwen_image_2.1_pe_i2i.int8_convrot.safetensors"
MODULATION_GAIN = 8.0


def demo_config(context_dim: int) -> Qwen21Config:
    return Qwen21Config(
        in_channels=64,
        out_channels=64,
        num_layers=2,
        attention_head_dim=64,
        num_attention_heads=4,
        context_in_dim=context_dim,
        mlp_hidden_dim=768,
        axes_dims_rope=(8, 28, 28),
    )


def demo_state(context_dim: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed + 70)
    model = Qwen21Transformer(demo_config(context_dim))
    for name, param in model.named_parameters():
        if param.dim() == 1:  # norms: near their identity (text_norm stores scale - 1)
            torch.nn.init.normal_(param, mean=0.0 if "text_norm" in name else 1.0, std=0.05)
        else:
            torch.nn.init.normal_(param, std=param.shape[1] ** -0.5)
    with torch.no_grad():
        model.modulation[1].weight.mul_(MODULATION_GAIN)
    return {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}


def build_qwen21_transformer(folder: Path, context_dim: int, seed: int) -> list[Path]:
    """Both files into ``folder`` (diffusion_models/)."""
    state = demo_state(context_dim, seed)
    blocks = [
        k
        for k in state
        if k.startswith("transformer_blocks.") and k.endswith(".weight") and state[k].dim() == 2
    ]
    quantized = int8_convrot.quantize_state_dict(state, blocks)
    return [
        write(folder / QWEN21_TRANSFORMER, state),
        write(folder / QWEN21_TRANSFORMER_INT8, {PREFIX + k: v for k, v in quantized.items()}),
    ]


def build_qwen21_set(root: Path, seed: int = 0) -> list[Path]:
    """The files a Qwen-Image 2.1 template loads, into the models folder ``root``: the text encoder
    (with its tokenizer sidecar), the VAE, the diffusion model in both formats (its text width read
    from the text encoder just written) and the two prompt enhancers (text-to-image and edit)."""
    from genserve.models.demo.qwen21_text import build_qwen21_text_encoder
    from genserve.models.demo.qwen21_vae import build_qwen21_vae
    from genserve.models.demo.qwen35_llm import DEMO_QWEN35_LLM_INT8, build_qwen35_llm
    from genserve.models.formats.safetensors_header import read_header

    encoder = build_qwen21_text_encoder(root / "text_encoders" / QWEN21_TEXT_ENCODER, seed)
    context_dim = read_header(encoder, "clip_name").tensors["model.norm.weight"].shape[0]
    encoders = root / "text_encoders"
    return [
        encoder,
        build_qwen21_vae(root / "vae" / QWEN21_VAE, seed),
        *build_qwen21_transformer(root / "diffusion_models", context_dim, seed),
        # the prompt enhancers: Qwen3.5 LLMs as ComfyUI single files, beside the text encoders
        build_qwen35_llm(encoders / DEMO_QWEN35_LLM_INT8, seed, int8=True),
        build_qwen35_llm(encoders / QWEN21_ENHANCER_I2I, seed + 1, int8=True),
    ]
