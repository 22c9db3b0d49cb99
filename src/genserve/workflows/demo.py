"""The demo workflows, in ComfyUI's API format ("Save (API)"), on the demo models.

They name models the way a ComfyUI user's workflow does (``qwen_image_vae.safetensors``...);
the model registry resolves those names to the demo's diffusers folders. Sizes are small
(about 128x128, 4 steps) so each runs in seconds on a CPU; a user raises them in the graph or
through the catalog's exposed inputs. ``write_demo_workflows`` drops them as JSON files for the
workflow catalog.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from genserve.models.demo.pipeline import DEMO_LORA, DEMO_TEXT_ENCODER, DEMO_TRANSFORMER, DEMO_VAE

UNET = f"{DEMO_TRANSFORMER}.safetensors"
CLIP = f"{DEMO_TEXT_ENCODER}.safetensors"
VAE = f"{DEMO_VAE}.safetensors"
SMALL_MEGAPIXELS = 128 * 128 / (1024 * 1024)  # ComfyUI's megapixels: 0.015625
PERSON, CLOTH = "person.png", "cloth.png"


def _loaders(lora: bool) -> dict[str, Any]:
    nodes: dict[str, Any] = {
        "37": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": UNET, "weight_dtype": "default"},
            "_meta": {"title": "Load Diffusion Model"},
        },
        "38": {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": CLIP, "type": "qwen_image", "device": "default"},
            "_meta": {"title": "Load CLIP"},
        },
        "39": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}, "_meta": {"title": "Load VAE"}},
    }
    model: list[Any] = ["37", 0]
    if lora:
        nodes["89"] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": model, "lora_name": DEMO_LORA, "strength_model": 1.0},
            "_meta": {"title": "LoraLoaderModelOnly"},
        }
        model = ["89", 0]
    nodes["66"] = {
        "class_type": "ModelSamplingAuraFlow",
        "inputs": {"model": model, "shift": 3.0},
        "_meta": {"title": "ModelSamplingAuraFlow"},
    }
    return nodes


def _tail(latent: list[Any], positive: list[Any], negative: list[Any], denoise: float, prefix: str):
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 42,
                "steps": 4,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "denoise": denoise,
                "model": ["75", 0] if prefix == "edit" else ["66", 0],
                "positive": positive,
                "negative": negative,
                "latent_image": latent,
            },
            "_meta": {"title": "KSampler"},
        },
        "8": {
            "class_type": "VAEDecode",
            "inputs": {"samples": ["3", 0], "vae": ["39", 0]},
            "_meta": {"title": "VAE Decode"},
        },
        "60": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": prefix, "images": ["8", 0]},
            "_meta": {"title": "Save Image"},
        },
    }


def text_to_image() -> dict[str, Any]:
    """Qwen-Image text-to-image: loaders -> two prompts -> empty latent -> KSampler -> decode -> save."""
    return {
        **_loaders(lora=False),
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a red shirt on a wooden table, studio light", "clip": ["38", 0]},
            "_meta": {"title": "CLIP Text Encode (Positive Prompt)"},
        },
        "7": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "", "clip": ["38", 0]},
            "_meta": {"title": "CLIP Text Encode (Negative Prompt)"},
        },
        "58": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": 128, "height": 128, "batch_size": 1},
            "_meta": {"title": "EmptySD3LatentImage"},
        },
        **_tail(["58", 0], ["6", 0], ["7", 0], 1.0, "text-to-image"),
    }


def image_edit() -> dict[str, Any]:
    """Qwen-Image-Edit-2509 with two pictures (person, cloth), as in the pipeline services' notes."""
    scaled = {"upscale_method": "lanczos", "megapixels": SMALL_MEGAPIXELS, "resolution_steps": 32}
    return {
        **_loaders(lora=True),
        "75": {
            "class_type": "CFGNorm",
            "inputs": {"model": ["66", 0], "strength": 1.0},
            "_meta": {"title": "CFGNorm"},
        },
        "78": {"class_type": "LoadImage", "inputs": {"image": PERSON}, "_meta": {"title": "Person"}},
        "106": {"class_type": "LoadImage", "inputs": {"image": CLOTH}, "_meta": {"title": "Cloth"}},
        "93": {
            "class_type": "ImageScaleToTotalPixels",
            "inputs": {"image": ["78", 0], **scaled},
            "_meta": {"title": "Scale Image to Total Pixels"},
        },
        "88": {
            "class_type": "VAEEncode",
            "inputs": {"pixels": ["93", 0], "vae": ["39", 0]},
            "_meta": {"title": "VAE Encode"},
        },
        "111": {
            "class_type": "TextEncodeQwenImageEditPlus",
            "inputs": {
                "prompt": "put the red shirt from picture 2 on the person in picture 1",
                "clip": ["38", 0],
                "vae": ["39", 0],
                "image1": ["78", 0],
                "image2": ["106", 0],
            },
            "_meta": {"title": "TextEncodeQwenImageEditPlus (Positive)"},
        },
        "110": {
            "class_type": "TextEncodeQwenImageEditPlus",
            "inputs": {
                "prompt": "",
                "clip": ["38", 0],
                "vae": ["39", 0],
                "image1": ["78", 0],
                "image2": ["106", 0],
            },
            "_meta": {"title": "TextEncodeQwenImageEditPlus (Negative)"},
        },
        **_tail(["88", 0], ["111", 0], ["110", 0], 1.0, "edit"),
    }


def image_to_image() -> dict[str, Any]:
    """Image-to-image: the picture scaled, encoded and re-sampled from denoise 0.6."""
    return {
        **_loaders(lora=False),
        "78": {"class_type": "LoadImage", "inputs": {"image": PERSON}, "_meta": {"title": "Load Image"}},
        "93": {
            "class_type": "ImageScaleToTotalPixels",
            "inputs": {
                "image": ["78", 0],
                "upscale_method": "lanczos",
                "megapixels": SMALL_MEGAPIXELS,
                "resolution_steps": 16,
            },
            "_meta": {"title": "Scale Image to Total Pixels"},
        },
        "88": {
            "class_type": "VAEEncode",
            "inputs": {"pixels": ["93", 0], "vae": ["39", 0]},
            "_meta": {"title": "VAE Encode"},
        },
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "the same person in a blue jacket", "clip": ["38", 0]},
            "_meta": {"title": "CLIP Text Encode (Positive Prompt)"},
        },
        "7": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "", "clip": ["38", 0]},
            "_meta": {"title": "CLIP Text Encode (Negative Prompt)"},
        },
        **_tail(["88", 0], ["6", 0], ["7", 0], 0.6, "image-to-image"),
    }


_BUILDERS = {"text-to-image": text_to_image, "image-edit": image_edit, "image-to-image": image_to_image}
DEMO_WORKFLOWS: tuple[str, ...] = tuple(_BUILDERS)


def demo_workflow(name: str) -> dict[str, Any]:
    """A fresh copy of one demo workflow (callers may edit it)."""
    try:
        return copy.deepcopy(_BUILDERS[name]())
    except KeyError:
        raise KeyError(f"no demo workflow {name!r}; known: {', '.join(DEMO_WORKFLOWS)}") from None


def write_demo_workflows(folder: Path) -> list[Path]:
    """Write each demo workflow as ``<name>.json`` into ``folder`` (for the workflow catalog)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DEMO_WORKFLOWS:
        path = folder / f"{name}.json"
        path.write_text(json.dumps(demo_workflow(name), indent=2) + "\n")
        paths.append(path)
    return paths


# The demo alias file: what /workflow-list and /workflow-info offer on a fresh machine.
DEMO_ALIASES: dict[str, dict[str, Any]] = {
    "text-to-image": {"file": "text-to-image.json", "inputs": ["6/text", "3/seed", "3/steps"]},
    "image-edit": {
        "file": "image-edit.json",
        "inputs": ["111/prompt", "78/image", "106/image", "3/seed"],
    },
    "image-to-image": {
        "file": "image-to-image.json",
        "inputs": ["6/text", "78/image", "3/seed", "3/denoise"],
    },
}


def write_demo_catalog(folder: Path, alias_file: Path) -> list[Path]:
    """The demo workflows plus an alias file exposing their prompt, image and seed inputs."""
    paths = write_demo_workflows(folder)
    alias_file = Path(alias_file)
    alias_file.parent.mkdir(parents=True, exist_ok=True)
    alias_file.write_text(json.dumps(DEMO_ALIASES, indent=2) + "\n")
    return [*paths, alias_file]
