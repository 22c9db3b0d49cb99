"""Files that cannot be what they are taken for are refused with a clear MODEL error naming the file
and the cause, never loaded half or wrong, and leave nothing in the model manager."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.pipeline import DEMO_TEXT_ENCODER, DEMO_TRANSFORMER, DEMO_VAE
from genserve.models.demo.single_files import (
    write_text_encoder_files,
    write_transformer_files,
    write_vae_files,
)
from genserve.models.formats.tokenizer_files import sidecar_folder
from genserve.models.loaders import default_loaders
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind, ModelRegistry


@pytest.fixture(scope="module")
def root(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("refusals")
    write_transformer_files(demo_models / "diffusion_models" / DEMO_TRANSFORMER, out / "diffusion_models")
    write_vae_files(demo_models / "vae" / DEMO_VAE, out / "vae")
    write_text_encoder_files(demo_models / "text_encoders" / DEMO_TEXT_ENCODER, out / "text_encoders")
    return out


@pytest.fixture
def manager(root: Path) -> Iterator[ModelManager]:
    made = ModelManager(
        ModelRegistry(root), default_loaders(models_root=root, hf_home=None), default_device="cpu"
    )
    yield made
    made.close()


def refused(manager: ModelManager, kind: ModelKind, name: str) -> str:
    with pytest.raises(GenserveError) as info:
        manager.load(kind, name)
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND, info.value
    assert str(Path("/")) + "tmp" not in info.value.message  # no server path in the answer
    assert manager.loaded() == [] and not manager.is_loaded(kind, name)
    return info.value.message


def test_a_scaled_file_without_its_scales_is_refused(root: Path, manager: ModelManager) -> None:
    state = load_file(str(root / "diffusion_models" / "demo_fp8_scaled.safetensors"))
    stripped = {k: v for k, v in state.items() if not k.endswith(".scale_weight") or "img_in" not in k}
    save_file(stripped, str(root / "diffusion_models" / "stripped.safetensors"))
    message = refused(manager, ModelKind.DIFFUSION, "stripped.safetensors")
    assert "stripped.safetensors is a scaled fp8 file" in message and "img_in.weight has no scale" in message


def test_a_truncated_file_is_refused(root: Path, manager: ModelManager) -> None:
    data = (root / "diffusion_models" / "demo_bare.safetensors").read_bytes()
    (root / "diffusion_models" / "cut.safetensors").write_bytes(data[: len(data) // 2])
    message = refused(manager, ModelKind.DIFFUSION, "cut.safetensors")
    assert "cut.safetensors" in message and "not a readable safetensors file" in message


def test_a_file_of_another_architecture_is_refused(root: Path, manager: ModelManager) -> None:
    shutil.copy(root / "vae" / "demo_wan.safetensors", root / "diffusion_models" / "a_vae.safetensors")
    message = refused(manager, ModelKind.DIFFUSION, "a_vae.safetensors")
    assert "a_vae.safetensors is not a Qwen-Image or Qwen-Image 2.1 transformer" in message
    shutil.copy(
        root / "diffusion_models" / "demo_bare.safetensors", root / "vae" / "a_transformer.safetensors"
    )
    assert "a_transformer.safetensors is not a Qwen-Image VAE" in refused(
        manager, ModelKind.VAE, "a_transformer.safetensors"
    )


def test_a_file_missing_weights_names_the_first_of_them(root: Path, manager: ModelManager) -> None:
    state = load_file(str(root / "diffusion_models" / "demo_bare.safetensors"))
    save_file(
        {k: v for k, v in state.items() if "transformer_blocks.1.attn" not in k},
        str(root / "diffusion_models" / "holes.safetensors"),
    )
    message = refused(manager, ModelKind.DIFFUSION, "holes.safetensors")
    assert "holes.safetensors does not match" in message and "missing transformer_blocks.1.attn." in message


def test_a_text_encoder_without_its_tokenizer_says_where_to_put_it(root: Path, manager: ModelManager) -> None:
    lone = root / "text_encoders" / "lone.safetensors"
    shutil.copy(root / "text_encoders" / "demo_comfy.safetensors", lone)
    assert not sidecar_folder(lone).exists()
    message = refused(manager, ModelKind.TEXT_ENCODER, "lone.safetensors")
    assert "text_encoders/lone.tokenizer/" in message and "preprocessor_config.json" in message
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in message and "models.allow_downloads" in message
