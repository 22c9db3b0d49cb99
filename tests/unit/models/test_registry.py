from __future__ import annotations

from pathlib import Path

import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind, ModelRegistry


def test_names_resolve_inside_their_kind(tmp_path: Path) -> None:
    (tmp_path / "vae/qwen_image_vae").mkdir(parents=True)
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras/a.safetensors").write_bytes(b"1234")
    registry = ModelRegistry(tmp_path)
    assert registry.resolve("vae", "qwen_image_vae.safetensors").path == tmp_path / "vae/qwen_image_vae"
    assert registry.resolve(ModelKind.LORA, "a.safetensors").disk_bytes() == 4
    assert [e.key for e in registry.entries()] == [("vae", "qwen_image_vae"), ("loras", "a.safetensors")]
    with pytest.raises(GenserveError) as info:
        registry.resolve(ModelKind.VAE, "a.safetensors", "vae_model_name")  # a LoRA is not a VAE
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND
    assert (
        "VAE model not found: a.safetensors" in info.value.message and "qwen_image_vae" in info.value.message
    )


@pytest.mark.parametrize("name", ["../loras/a.safetensors", "..", "", "x/y/z", "x/../y", "/etc/passwd"])
def test_names_never_escape(tmp_path: Path, name: str) -> None:
    (tmp_path / "vae").mkdir()
    with pytest.raises(GenserveError) as info:
        ModelRegistry(tmp_path).resolve("vae", name, "vae_model_name")
    assert info.value.code is ErrorCode.INVALID_INPUT


def test_a_repo_id_is_a_name_looked_up_in_the_hub_cache_layout(tmp_path: Path) -> None:
    """``org/name`` is a Hugging Face repo id, not a path: it names ``models--org--name`` only."""
    (tmp_path / "vae").mkdir()
    with pytest.raises(GenserveError) as info:
        ModelRegistry(tmp_path).resolve("vae", "x/y", "vae_model_name")
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND and "x/y" in info.value.message
    (tmp_path / "vae" / "models--x--y" / "snapshots" / "r1").mkdir(parents=True)
    found = ModelRegistry(tmp_path).resolve("vae", "x/y", "vae_model_name")
    assert (found.name, found.path) == ("x/y", tmp_path / "vae" / "models--x--y")
