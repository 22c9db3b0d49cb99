"""The demo LoRA written again in the key layouts real Qwen-Image LoRAs come in.

Users drop LoRAs from many trainers and hubs into ``models/loras/``: Lightning's bare keys,
ComfyUI's ``diffusion_model.`` prefix, kohya (musubi-tuner) flat names, peft's
``base_model.model.`` prefix. The demo set holds one LoRA in diffusers' layout; these files carry
the same weights in every other layout, so a test (or a user trying the demo) can check that each
one loads and changes the output exactly as the diffusers-layout file does.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

LIGHTNING = "demo_lightning.safetensors"
COMFYUI = "demo_comfyui.safetensors"
KOHYA = "demo_kohya.safetensors"
PEFT = "demo_peft.safetensors"
# Alphas away from the rank (scale alpha/rank != 1), each with the up weights divided by that scale:
# a loader that ignores alpha, or applies it twice, gives a different output.
KOHYA_ALPHA = 1.5
PEFT_ALPHA = 8.0


def write_lora_layouts(loras_dir: Path, reference: Path) -> list[Path]:
    """Write ``reference`` (a diffusers-layout LoRA: ``transformer.<module>.lora_A.weight`` and
    ``.lora_B.weight``, scale 1) as Lightning, ComfyUI, kohya and peft files in ``loras_dir``.

    Each stores the same effective delta (scale x up @ down) in its own way: Lightning with
    ``.alpha`` equal to the rank; ComfyUI with ``lora_A``/``lora_B`` names and no alpha (scale 1);
    kohya with ``.alpha`` = KOHYA_ALPHA; peft with the ``.default.`` adapter infix and its alpha in
    the adapter config that diffusers reads from the file's ``lora_adapter_metadata``. Returns the
    paths in that order."""
    from safetensors.torch import save_file

    pairs = _pairs(reference)
    loras_dir.mkdir(parents=True, exist_ok=True)
    lightning, comfyui, kohya, peft = {}, {}, {}, {}
    for module, (down, up) in pairs.items():
        rank = down.shape[0]
        lightning |= {
            f"{module}.lora_down.weight": down,
            f"{module}.lora_up.weight": up,
            f"{module}.alpha": torch.tensor(float(rank)),
        }
        comfyui |= {
            f"diffusion_model.{module}.lora_A.weight": down,
            f"diffusion_model.{module}.lora_B.weight": up,
        }
        flat = "lora_unet_" + module.replace(".", "_")
        kohya |= {
            f"{flat}.lora_down.weight": down,
            f"{flat}.lora_up.weight": up * (rank / KOHYA_ALPHA),
            f"{flat}.alpha": torch.tensor(KOHYA_ALPHA),
        }
        peft |= {
            f"base_model.model.{module}.lora_A.default.weight": down,
            f"base_model.model.{module}.lora_B.default.weight": up * (rank / PEFT_ALPHA),
        }
    config = {
        "r": Counter(down.shape[0] for down, _ in pairs.values()).most_common(1)[0][0],
        "lora_alpha": PEFT_ALPHA,
        "target_modules": sorted(pairs),
        "peft_type": "LORA",
    }
    plain = {"format": "pt"}
    files = [
        (LIGHTNING, lightning, plain),
        (COMFYUI, comfyui, plain),
        (KOHYA, kohya, plain),
        (PEFT, peft, {**plain, "lora_adapter_metadata": json.dumps(config)}),
    ]
    paths = []
    for name, tensors, metadata in files:
        path = loras_dir / name
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
        paths.append(path)
    return paths


def _pairs(reference: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (down, up) of a diffusers-layout LoRA, in float32."""
    from safetensors.torch import load_file

    tensors = load_file(str(reference))
    pairs = {}
    for key, down in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            up = tensors[key.replace(".lora_A.weight", ".lora_B.weight")]
            pairs[module] = (down.to(torch.float32), up.to(torch.float32))
    if not pairs or len(tensors) != 2 * len(pairs):
        raise ValueError(f"{reference.name} is not a diffusers-layout LoRA without alphas")
    return pairs
