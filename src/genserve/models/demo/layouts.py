"""``genserve models demo --formats``: the demo models written again in every layout users hold,
beside the demo folders, so that each can be tried (and is tested) through the real loaders.

Written into the models folder: ``diffusion_models/demo_*.safetensors`` (bare and prefixed keys,
fp8 plain, ``scale_weight`` and ``weight_scale``), ``vae/demo_wan.safetensors``,
``text_encoders/demo_comfy*.safetensors`` with their ``.tokenizer/`` folders,
``loras/demo_{lightning,comfyui,kohya,peft}.safetensors``, a diffusers snapshot
``diffusion_models/demo_snapshot/`` (it serves its VAE and text encoder too), and the same
snapshot in the hub cache's layout, ``diffusion_models/models--genserve--demo-edit`` (repo id
``genserve/demo-edit``); and Qwen-Image-Layered's pair, ``diffusion_models/qwen_image_layered_bf16
.safetensors`` and ``vae/qwen_image_layered_vae.safetensors`` (kept out of the plain demo set: its
RGBA VAE would sort first among the VAEs, and so be every new node's default); and Qwen-Image 2.1's
files under their ComfyUI names, ``diffusion_models/qwen_image_2.1_{bf16,int8_convrot}``,
``text_encoders/qwen3vl_8b_bf16`` (Qwen3-VL) and ``vae/qwen_image_2.1_vae_bf16`` (kept out of the
plain set for the same reason).
"""

from __future__ import annotations

from pathlib import Path

from genserve.models.demo.layered import (
    LAYERED_TRANSFORMER,
    LAYERED_VAE,
    build_layered_transformer,
    build_layered_vae,
)
from genserve.models.demo.lora_files import write_lora_layouts
from genserve.models.demo.pipeline import DEMO_LORA, DEMO_TEXT_ENCODER, DEMO_TRANSFORMER, DEMO_VAE
from genserve.models.demo.qwen21 import build_qwen21_set
from genserve.models.demo.single_files import (
    write_hub_cache,
    write_snapshot,
    write_text_encoder_files,
    write_transformer_files,
    write_vae_files,
)

SNAPSHOT = "demo_snapshot"
REPO_ID = "genserve/demo-edit"


def write_every_layout(root: Path) -> list[Path]:
    """Every layout, from the demo set already built in ``root`` (the models folder)."""
    root = Path(root)
    diffusion = root / "diffusion_models"
    return [
        *write_transformer_files(diffusion / DEMO_TRANSFORMER, diffusion),
        *write_vae_files(root / "vae" / DEMO_VAE, root / "vae"),
        *write_text_encoder_files(root / "text_encoders" / DEMO_TEXT_ENCODER, root / "text_encoders"),
        *write_lora_layouts(root / "loras", root / "loras" / DEMO_LORA),
        write_snapshot(root, diffusion / SNAPSHOT),
        write_hub_cache(root, diffusion, REPO_ID),
        build_layered_transformer(diffusion / LAYERED_TRANSFORMER, diffusion / DEMO_TRANSFORMER, 0),
        build_layered_vae(root / "vae" / LAYERED_VAE, root / "vae" / DEMO_VAE, 0),
        *build_qwen21_set(root),
    ]
