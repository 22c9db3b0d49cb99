"""A demo Qwen-Image 2.1 VAE: ``vae/qwen_image_2.1_vae_bf16.safetensors`` as ComfyUI ships it (the
Wan-2.2 key layout, causal convolutions 5-D with a temporal depth of 1, bf16), with random weights
and tiny widths. The real file's structure is kept where it is what the loader reads or the
latent's shape depends on: five levels (1/16), two residual blocks a level, the temporal levels'
``time_conv``, RGBA, and the 64 latent channels the per-channel statistics are for. Widths differ
between encoder and decoder, as in the real file (96 and 144), so the derivation is exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genserve.models.arch.qwen21_vae import Qwen21Vae, Qwen21VaeConfig
from genserve.models.demo.single_files import write
from genserve.models.formats import qwen21_vae

QWEN21_VAE = "qwen_image_2.1_vae_bf16.safetensors"
DEMO_CONFIG = Qwen21VaeConfig(base_dim=4, decoder_base_dim=6)  # well under 1 MB, built in milliseconds


def build_qwen21_vae(path: Path, seed: int) -> Path:
    """Random weights in the real key layout; the same seed writes the same file."""
    torch.manual_seed(seed + 70)
    vae = Qwen21Vae(DEMO_CONFIG).eval()
    with torch.no_grad():  # gains near one, not all one, so a norm that is skipped shows
        for name, param in vae.named_parameters():
            if name.endswith(".gamma"):
                param.uniform_(0.8, 1.2)
    state = {k: v.detach().to(torch.bfloat16) for k, v in vae.state_dict().items()}
    return write(path, qwen21_vae.from_module(state))
