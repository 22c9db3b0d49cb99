"""The demo models written again as the single files ComfyUI users hold, in every layout genserve
reads: the transformer with bare and prefixed keys, as plain fp8, fp8 with ``scale_weight``, fp8
with ``weight_scale`` + ``comfy_quant`` and int8 ConvRot; the VAE in the Wan-2.1 layout; the text
encoder in the older transformers layout (bf16 and scaled fp8) with its tokenizer in a sidecar
folder.

Each file holds the demo folder's exact weights (or their fp8 quantisation), so loading it must
give the same model: that is what the tests check, through the real loading code.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from genserve.models.formats import int8_convrot, qwen_transformer, wan_vae
from genserve.models.formats.tokenizer_files import sidecar_folder

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
Layout = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a diffusers or transformers folder, as one state dict."""
    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state


def write(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def plain_fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``*_fp8_e4m3fn``: the matrices cast to fp8, nothing else."""
    return {k: v.to(FP8) if _quantised(v) else v for k, v in state.items()}


def scale_weight(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's older scaled file: a ``scaled_fp8`` marker and one fp32 ``scale_weight`` per matrix."""
    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.empty(0, dtype=FP8)}
    for key, value in state.items():
        if _quantised(value):
            scale = value.abs().max().float().clamp(min=1e-12) / FP8_MAX
            out[key] = (value.float() / scale).to(FP8)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value
    return out


def weight_scale(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's newer scaled file: per matrix ``weight_scale`` (one per row) and ``comfy_quant``."""
    quant = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _quantised(value):
            scale = value.abs().amax(dim=1).float().clamp(min=1e-12) / FP8_MAX
            out[key] = (value.float() / scale[:, None]).to(FP8)
            stem = key[: -len(".weight")]
            out[f"{stem}.weight_scale"] = scale
            out[f"{stem}.comfy_quant"] = quant.clone()
        else:
            out[key] = value
    return out


def _quantised(value: torch.Tensor) -> bool:
    return value.dim() == 2 and value.is_floating_point() and min(value.shape) > 1


def write_transformer_files(folder: Path, out: Path) -> list[Path]:
    state = folder_weights(folder)
    prefixed = {qwen_transformer.PREFIX + k: v for k, v in state.items()}
    return [
        write(out / "demo_bare.safetensors", state),
        write(out / "demo_prefixed.safetensors", prefixed),
        write(out / "demo_fp8_e4m3fn.safetensors", plain_fp8(state)),
        write(out / "demo_fp8_scaled.safetensors", scale_weight(prefixed)),
        write(out / "demo_fp8_weight_scale.safetensors", weight_scale(state)),
        write(out / "demo_int8_convrot.safetensors", int8_convrot_blocks(prefixed)),
    ]


def int8_convrot_blocks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's int8 ConvRot file (as Qwen-Image-Edit-2511's ``_int8_convrot``): the blocks'
    matrices in int8 with their scales and ``comfy_quant`` markers, the rest as it was."""
    keys = [k for k, v in state.items() if "transformer_blocks." in k and _quantised(v)]
    return int8_convrot.quantize_state_dict(state, keys)


def write_vae_files(folder: Path, out: Path) -> list[Path]:
    return [write(out / "demo_wan.safetensors", wan_vae.from_diffusers(folder_weights(folder)))]


def comfy_text_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys in the older layout ComfyUI's files use (``model.*``, ``visual.*``; transformers
    saves that layout too), without the LM head, as ComfyUI's text encoder files come."""
    out = {}
    for key, value in state.items():
        if key.startswith("model.language_model."):
            key = "model." + key[len("model.language_model.") :]
        elif key.startswith("model.visual."):
            key = key[len("model.") :]
        if not key.startswith("lm_head."):
            out[key] = value
    return out


def write_text_encoder_files(folder: Path, out: Path) -> list[Path]:
    """The text encoder in ComfyUI's layout, with a sidecar tokenizer folder each (no config.json:
    the config is derived from the shapes)."""
    state = comfy_text_encoder(folder_weights(folder))
    written = [
        write(out / "demo_comfy.safetensors", state),
        write(out / "demo_comfy_fp8_scaled.safetensors", scale_weight(state)),
    ]
    for file in written:
        side = sidecar_folder(file)
        side.mkdir(exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
            shutil.copy(folder / name, side / name)
    return written


def write_snapshot(models: Path, out: Path) -> Path:
    """The demo pipeline as a diffusers snapshot folder (``model_index.json``, ``transformer/``,
    ``vae/``, ``text_encoder/``, ``tokenizer/``, ``processor/``), as Hugging Face users hold it."""
    from genserve.models.demo.pipeline import DEMO_TEXT_ENCODER, DEMO_TRANSFORMER, DEMO_VAE

    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(models / "diffusion_models" / DEMO_TRANSFORMER, out / "transformer", dirs_exist_ok=True)
    shutil.copytree(models / "vae" / DEMO_VAE, out / "vae", dirs_exist_ok=True)
    encoder = models / "text_encoders" / DEMO_TEXT_ENCODER
    (out / "text_encoder").mkdir(exist_ok=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        if (encoder / name).is_file():
            shutil.copy(encoder / name, out / "text_encoder" / name)
    tokenizer = ("tokenizer.json", "tokenizer_config.json")
    for part, names in (("tokenizer", tokenizer), ("processor", (*tokenizer, "preprocessor_config.json"))):
        (out / part).mkdir(exist_ok=True)
        for name in names:
            shutil.copy(encoder / name, out / part / name)
    index = {
        "_class_name": "QwenImageEditPlusPipeline",
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "processor": ["transformers", "Qwen2VLProcessor"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def write_hub_cache(models: Path, hub: Path, repo_id: str, revision: str = "0123456789abcdef") -> Path:
    """The same snapshot in the hub cache's layout: ``models--<org>--<name>/snapshots/<rev>`` with
    ``refs/main`` naming the revision."""
    from genserve.models.formats.layouts import cache_folder_name

    folder = hub / cache_folder_name(repo_id)
    write_snapshot(models, folder / "snapshots" / revision)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return folder
