"""Demo Qwen-Image-Layered models, as the single files ComfyUI users hold:
``diffusion_models/qwen_image_layered_bf16.safetensors`` (the demo transformer's shapes with the
layered model's ``addition_t_embedding`` and layer-wise rope) and
``vae/qwen_image_layered_vae.safetensors`` (the demo VAE's shapes with RGBA in and out, Wan-2.1
layout). Random weights; the loaders tell them apart from the plain models by their tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genserve.models.demo.single_files import write
from genserve.models.formats import wan_vae

LAYERED_TRANSFORMER = "qwen_image_layered_bf16.safetensors"
LAYERED_VAE = "qwen_image_layered_vae.safetensors"


def build_layered_transformer(path: Path, transformer_folder: Path, seed: int) -> Path:
    """The demo transformer's config, layered, in bf16 with bare keys."""
    from diffusers import QwenImageTransformer2DModel

    config = dict(QwenImageTransformer2DModel.load_config(transformer_folder))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(seed + 50)
    model = QwenImageTransformer2DModel(**{**config, "use_additional_t_cond": True, "use_layer3d_rope": True})
    state = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
    return write(path, state)


def build_layered_vae(path: Path, vae_folder: Path, seed: int) -> Path:
    """The demo VAE's config with RGBA images (4 channels in and out), in the Wan-2.1 layout."""
    from diffusers import AutoencoderKLQwenImage

    config = dict(AutoencoderKLQwenImage.load_config(vae_folder))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(seed + 60)
    vae = AutoencoderKLQwenImage(**{**config, "input_channels": 4}).eval()
    state = {k: v.detach() for k, v in vae.state_dict().items()}
    return write(path, wan_vae.from_diffusers(state))
