"""Tiny demo models with random, seeded weights in the real on-disk formats.

No weights can be downloaded on a fresh machine, so every API must work on models genserve
builds itself. They use the real classes and file layouts (diffusers folders with config.json +
safetensors, a transformers folder with a tokenizer and image processor, a peft LoRA in
safetensors, ONNX files for lip-sync, a transformers causal-LM folder for chat: llm_demo.py), so
the loading code that serves them serves real weights unchanged.

The tokenizer is a byte-level BPE trained here with Qwen2's pre-tokenizer; its vocabulary size
is chosen so the edit prompt template's fixed prefix is exactly 64 tokens, as with the real
tokenizer (the pipeline drops that many hidden states).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from genserve.models.demo import controlnets
from genserve.models.demo.lipsync import build_lipsync_demo
from genserve.models.demo.llm import DEMO_LLM, build_llm
from genserve.models.demo.vision_chat import DEMO_VL_LLM, build_vision_chat
from genserve.models.loaders.text_encoder import EDIT_PROMPT_TEMPLATE, TEMPLATE_PREFIX_TOKENS
from genserve.models.registry import ModelKind

EDIT_TEMPLATE_PREFIX = EDIT_PROMPT_TEMPLATE.split("{}")[0]

# Names as the spec's examples spell them (minus the weights suffix: these are folders).
DEMO_VAE = "qwen_image_vae"
DEMO_TEXT_ENCODER = "qwen_2.5_vl_7b_fp8_scaled"
DEMO_TRANSFORMER = "qwen_image_edit_2509_fp8_e4m3fn"
DEMO_LORA = "Qwen-Image-Lightning-4steps-V2.0.safetensors"
DEMO_LIPSYNC = "sanders"  # the lip-sync spec's example model id
DEMO_MARKER = ".genserve-demo.json"

# Qwen2's pre-tokenizer split pattern (as published with the Qwen2 tokenizer).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "by using the green masked area, put the cloth on the person",
    "Picture 1: Picture 2: a photo of a person wearing a red shirt",
    "Describe the image in detail. colors shapes textures background objects",
    "make the sky blue, add a hat, change the shirt to the cloth in picture 2",
]


@dataclass
class DemoReport:
    root: Path
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def train_demo_tokenizer(seed: int):  # -> tokenizers.Tokenizer
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    prefix_text = EDIT_TEMPLATE_PREFIX.replace("<|im_start|>", "").replace("<|im_end|>", "")
    corpus = _CORPUS * 3 + [prefix_text] * 4
    rng = np.random.default_rng(seed)
    rng.shuffle(corpus)
    for vocab_size in range(300, 2000, 4):
        tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(corpus, trainer)
        count = len(tokenizer.encode(EDIT_TEMPLATE_PREFIX).ids)
        if count == TEMPLATE_PREFIX_TOKENS:
            return tokenizer
        if count < TEMPLATE_PREFIX_TOKENS:
            break
    raise RuntimeError("could not train a demo tokenizer whose template prefix is 64 tokens")


def demo_text_encoder_config(tokenizer: Any) -> Any:  # -> Qwen2_5_VLConfig
    """Qwen2.5-VL in miniature, with the real model's fixed constants (a text head dim of 128, a
    vision head dim of 80, mrope sections 16/24/24, 14-pixel patches merged 2x2, a full-attention
    vision block every 8th), so a single file of it derives its config like the 7B file does."""
    from transformers import Qwen2_5_VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    vocab = len(tokenizer)
    return Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 1,
            "num_key_value_heads": 1,
            "vocab_size": vocab,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0,
            "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 80,
            "intermediate_size": 160,
            "num_heads": 1,
            "out_hidden_size": 128,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vocab_size=vocab,
        hidden_size=128,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def build_text_encoder(folder: Path, seed: int) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = Qwen2Tokenizer(
        tokenizer_object=train_demo_tokenizer(seed),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    config = demo_text_encoder_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil().save_pretrained(folder)


def build_vae(folder: Path, seed: int):  # -> AutoencoderKLQwenImage
    from diffusers import AutoencoderKLQwenImage

    # The real VAE's layout (two res blocks per level, what the Wan single-file conversion assumes)
    # and its latents mean and std (diffusers' defaults), in a smaller width.
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        temperal_downsample=[False, True, True],
    ).eval()
    vae.save_pretrained(folder)
    return vae


def build_transformer(folder: Path, seed: int):  # -> QwenImageTransformer2DModel
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    # Two blocks of one head, with the real model's head dim (128) and rope axes (16, 56, 56): the
    # constants a single file's config is derived with.
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=128,
        num_attention_heads=1,
        joint_attention_dim=128,
        guidance_embeds=False,
        axes_dims_rope=(16, 56, 56),
    ).eval()
    transformer.save_pretrained(folder)
    return transformer


def build_lora(path: Path, transformer, seed: int) -> None:
    """A rank-4 peft LoRA on the attention projections, saved with diffusers' key layout."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
    )
    torch.manual_seed(seed + 1)
    transformer.add_adapter(config, adapter_name="demo")
    state = get_peft_model_state_dict(transformer, adapter_name="demo")
    transformer.delete_adapters("demo")
    tensors = {f"transformer.{key}": value.detach().contiguous() * 0.5 for key, value in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt", "genserve_demo": "1"})


def build_images(folder: Path, seed: int) -> list[Path]:
    """A 'person' and a 'cloth' picture, drawn so that a person can tell them apart."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    person = Image.new("RGB", (192, 256), (200, 210, 225))
    draw = ImageDraw.Draw(person)
    draw.ellipse((66, 20, 126, 80), fill=(224, 182, 150))
    draw.rectangle((56, 86, 136, 190), fill=(40, 160, 60))  # the green masked area
    draw.rectangle((66, 190, 86, 250), fill=(50, 50, 90))
    draw.rectangle((106, 190, 126, 250), fill=(50, 50, 90))
    cloth = Image.new("RGB", (160, 160), (245, 245, 245))
    ImageDraw.Draw(cloth).polygon(
        [(20, 30), (60, 10), (100, 10), (140, 30), (120, 150), (40, 150)], fill=(180, 30, 40)
    )
    noise = rng.integers(0, 12, size=(160, 160, 3), dtype=np.uint8)
    cloth = Image.fromarray(np.clip(np.asarray(cloth, dtype=np.int16) - noise, 0, 255).astype(np.uint8))
    paths = [folder / "person.png", folder / "cloth.png"]
    person.save(paths[0])
    cloth.save(paths[1])
    return paths


def demo_targets(root: Path) -> dict[ModelKind, Path]:
    """Where each demo model lives under the models folder ``root``."""
    return {
        ModelKind.VAE: root / ModelKind.VAE.value / DEMO_VAE,
        ModelKind.TEXT_ENCODER: root / ModelKind.TEXT_ENCODER.value / DEMO_TEXT_ENCODER,
        ModelKind.DIFFUSION: root / ModelKind.DIFFUSION.value / DEMO_TRANSFORMER,
        ModelKind.LORA: root / ModelKind.LORA.value / DEMO_LORA,
        ModelKind.CONTROLNET: root / ModelKind.CONTROLNET.value / controlnets.UNION,
        ModelKind.MODEL_PATCH: root / ModelKind.MODEL_PATCH.value / controlnets.CANNY_PATCH,
        ModelKind.LIPSYNC: root / ModelKind.LIPSYNC.value / DEMO_LIPSYNC,
        ModelKind.LLM: root / ModelKind.LLM.value / DEMO_LLM,
    }


def demo_extras(root: Path) -> dict[ModelKind, list[Path]]:
    """The files a kind's builder writes beside its target, checked as part of it."""
    control, patches = root / ModelKind.CONTROLNET.value, root / ModelKind.MODEL_PATCH.value
    return {
        ModelKind.CONTROLNET: [control / controlnets.INPAINTING, control / controlnets.FUN],
        ModelKind.MODEL_PATCH: [patches / controlnets.INPAINT_PATCH],
        ModelKind.LLM: [root / ModelKind.LLM.value / DEMO_VL_LLM],
    }


def _built(root: Path, kind: ModelKind, path: Path) -> bool:
    return path.exists() and all(p.exists() for p in demo_extras(root).get(kind, []))


def demo_present(root: Path) -> bool:
    """Built, and nothing added to the demo set since (a newer genserve adds the missing ones)."""
    root = Path(root)
    targets = demo_targets(root)
    return (root / DEMO_MARKER).is_file() and all(_built(root, k, p) for k, p in targets.items())


def build_demo(root: Path, images_dir: Path | None = None, seed: int = 0, force: bool = False) -> DemoReport:
    """Build every demo model under ``root`` (the models folder); existing models are kept unless forced."""
    started = time.perf_counter()
    root = Path(root)
    report = DemoReport(root=root)
    targets = demo_targets(root)
    for kind, path in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        label = f"{kind.value}/{path.name}"
        if _built(root, kind, path) and not force:
            report.skipped.append(label)
            continue
        if path.is_dir():
            shutil.rmtree(path)
        if kind is ModelKind.VAE:
            build_vae(path, seed)
        elif kind is ModelKind.TEXT_ENCODER:
            build_text_encoder(path, seed)
        elif kind is ModelKind.DIFFUSION:
            build_transformer(path, seed)
        elif kind is ModelKind.LIPSYNC:
            build_lipsync_demo(path, seed=seed)
        elif kind is ModelKind.LLM:
            build_llm(path, seed)
            build_vision_chat(path.parent / DEMO_VL_LLM, seed)
        elif kind is ModelKind.CONTROLNET:
            controlnets.build_controlnets(path.parent, targets[ModelKind.DIFFUSION], seed)
        elif kind is ModelKind.MODEL_PATCH:
            controlnets.build_model_patches(path.parent, targets[ModelKind.DIFFUSION], seed)
        else:
            from diffusers import QwenImageTransformer2DModel

            transformer = QwenImageTransformer2DModel.from_pretrained(targets[ModelKind.DIFFUSION])
            build_lora(path, transformer, seed)
        report.built.append(label)
    if images_dir is not None:
        report.images = build_images(Path(images_dir), seed)
    (root / DEMO_MARKER).write_text(json.dumps({"seed": seed, "models": [str(p) for p in targets.values()]}))
    report.seconds = time.perf_counter() - started
    return report
