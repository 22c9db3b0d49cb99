from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from genserve.models.demo import pipeline as demo
from genserve.models.registry import ModelKind, ModelRegistry


def test_demo_set_is_in_real_formats(demo_models: Path) -> None:
    registry = ModelRegistry(demo_models)
    vae = registry.resolve(ModelKind.VAE, "qwen_image_vae.safetensors").path
    assert json.loads((vae / "config.json").read_text())["_class_name"] == "AutoencoderKLQwenImage"
    transformer = registry.resolve(ModelKind.DIFFUSION, "qwen_image_edit_2509_fp8_e4m3fn.safetensors").path
    assert (
        json.loads((transformer / "config.json").read_text())["_class_name"] == "QwenImageTransformer2DModel"
    )
    text = registry.resolve(ModelKind.TEXT_ENCODER, "qwen_2.5_vl_7b_fp8_scaled.safetensors").path
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (text / name).is_file(), name
    lora = registry.resolve(ModelKind.LORA, demo.DEMO_LORA).path
    with safe_open(str(lora), "pt") as handle:
        assert all("lora_" in key for key in handle.keys())  # noqa: SIM118 (safe_open has no __iter__)


def test_tokenizer_prefix_is_64_tokens(demo_models: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_models / "text_encoders" / demo.DEMO_TEXT_ENCODER)
    assert len(tokenizer(demo.EDIT_TEMPLATE_PREFIX)["input_ids"]) == 64


def test_build_is_seeded_and_keeps_existing(tmp_path: Path) -> None:
    first = demo.build_demo(tmp_path / "a", images_dir=tmp_path / "img")
    assert len(first.built) == 8 and first.seconds < 60 and demo.demo_present(tmp_path / "a")
    second = demo.build_demo(tmp_path / "b")
    for kind, name in [("vae", demo.DEMO_VAE), ("diffusion_models", demo.DEMO_TRANSFORMER)]:
        a = (tmp_path / "a" / kind / name / "diffusion_pytorch_model.safetensors").read_bytes()
        assert a == (tmp_path / "b" / kind / name / "diffusion_pytorch_model.safetensors").read_bytes()
    for control in ("controlnet", "model_patches"):  # every control file, seeded (same tensors)
        files = sorted(p.name for p in (tmp_path / "a" / control).iterdir())
        assert len(files) >= 2
        for name in files:
            a, b = (load_file(str(tmp_path / side / control / name)) for side in "ab")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    lipsync = Path("lipsync") / demo.DEMO_LIPSYNC / "model.onnx"
    assert (tmp_path / "a" / lipsync).read_bytes() == (tmp_path / "b" / lipsync).read_bytes()
    assert second.images == []
    again = demo.build_demo(tmp_path / "a")
    assert again.built == [] and len(again.skipped) == 8
    assert {p.name for p in first.images} == {"person.png", "cloth.png"}
