"""The demo models written as the single files users hold load, through the real loaders, to the
demo folders' exact weights (fp8 files within their quantisation error) and give the same outputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from genserve.models.demo.pipeline import DEMO_TEXT_ENCODER, DEMO_TRANSFORMER, DEMO_VAE
from genserve.models.demo.single_files import (
    write_text_encoder_files,
    write_transformer_files,
    write_vae_files,
)
from genserve.models.kinds import ModelEntry, ModelKind
from genserve.models.loaders.text_encoder import make_text_encoder_loader
from genserve.models.loaders.transformer import load_transformer
from genserve.models.loaders.vae import load_vae

CPU, F32 = torch.device("cpu"), torch.float32
# fp8 e4m3 keeps 3 mantissa bits: one weight is within ~6 % of its value; a whole (tiny) network
# stays within this share of its output's largest magnitude.
FP8_SHARE = 0.15


@pytest.fixture(scope="module")
def files(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    out = tmp_path_factory.mktemp("single-files")
    written = [
        *write_transformer_files(
            demo_models / "diffusion_models" / DEMO_TRANSFORMER, out / "diffusion_models"
        ),
        *write_vae_files(demo_models / "vae" / DEMO_VAE, out / "vae"),
        *write_text_encoder_files(demo_models / "text_encoders" / DEMO_TEXT_ENCODER, out / "text_encoders"),
    ]
    yield {path.name: path for path in written}


def entry(kind: ModelKind, path: Path) -> ModelEntry:
    return ModelEntry(kind, path.name, path)


def close(got: torch.Tensor, want: torch.Tensor, fp8: bool) -> None:
    if fp8:
        assert (got - want).abs().max() <= FP8_SHARE * want.abs().max()
    else:
        assert torch.equal(got, want)


def transformer_output(model: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 16, 64, generator=generator)  # 4x4 patches of 64 packed channels
    text = torch.randn(1, 5, 128, generator=generator)
    with torch.no_grad():
        return model(
            hidden_states=hidden,
            timestep=torch.tensor([0.5]),
            encoder_hidden_states=text,
            encoder_hidden_states_mask=None,
            img_shapes=[[(1, 4, 4)]],
            return_dict=False,
        )[0]


@pytest.mark.parametrize(
    ("name", "fp8"),
    [
        ("demo_bare.safetensors", False),
        ("demo_prefixed.safetensors", False),
        ("demo_fp8_e4m3fn.safetensors", True),
        ("demo_fp8_scaled.safetensors", True),
        ("demo_fp8_weight_scale.safetensors", True),
        ("demo_int8_convrot.safetensors", True),  # int8's rounding, within fp8's tolerance
    ],
)
def test_transformer_files_load_as_the_folder(
    files: dict[str, Path], demo_models: Path, name: str, fp8: bool
) -> None:
    folder = load_transformer(
        entry(ModelKind.DIFFUSION, demo_models / "diffusion_models" / DEMO_TRANSFORMER), CPU, F32
    )
    single = load_transformer(entry(ModelKind.DIFFUSION, files[name]), CPU, F32)
    want, got = folder.model.transformer, single.model.transformer
    for key in ("in_channels", "out_channels", "num_layers", "attention_head_dim", "num_attention_heads",
                "joint_attention_dim", "guidance_embeds", "zero_cond_t"):  # fmt: skip
        assert got.config[key] == want.config[key], key
    assert list(got.config.axes_dims_rope) == list(want.config.axes_dims_rope)
    assert single.memory_bytes == folder.memory_bytes
    if not fp8:
        state = got.state_dict()
        assert all(torch.equal(state[k], v) for k, v in want.state_dict().items())
    close(transformer_output(got), transformer_output(want), fp8)


def test_the_wan_vae_file_encodes_and_decodes_as_the_folder(
    files: dict[str, Path], demo_models: Path
) -> None:
    folder = load_vae(entry(ModelKind.VAE, demo_models / "vae" / DEMO_VAE), CPU, F32).model.module
    single = load_vae(entry(ModelKind.VAE, files["demo_wan.safetensors"]), CPU, F32).model.module
    assert single.config.latents_mean == folder.config.latents_mean
    image = torch.rand(1, 3, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        latent = folder.encode(image).latent_dist.mode()
        assert torch.equal(single.encode(image).latent_dist.mode(), latent)
        assert torch.equal(single.decode(latent).sample, folder.decode(latent).sample)


@pytest.mark.parametrize(
    ("name", "fp8"), [("demo_comfy.safetensors", False), ("demo_comfy_fp8_scaled.safetensors", True)]
)
def test_text_encoder_files_encode_as_the_folder(
    files: dict[str, Path], demo_models: Path, name: str, fp8: bool
) -> None:
    load = make_text_encoder_loader(files[name].parent.parent)
    folder = load(
        entry(ModelKind.TEXT_ENCODER, demo_models / "text_encoders" / DEMO_TEXT_ENCODER), CPU, F32
    ).model
    single = load(entry(ModelKind.TEXT_ENCODER, files[name]), CPU, F32).model
    from PIL import Image

    image = Image.new("RGB", (56, 56), (120, 30, 200))
    outputs = []
    for encoder in (folder, single):
        inputs = encoder.processor(text=["a <|vision_start|><|image_pad|><|vision_end|> hat"], images=[image])
        with torch.no_grad():
            outputs.append(encoder.model.model(**inputs).last_hidden_state)
    close(outputs[1], outputs[0], fp8)


def test_a_snapshot_and_a_hub_cache_serve_every_part(demo_models: Path, tmp_path: Path) -> None:
    """A snapshot in diffusion_models/ answers for its VAE and text encoder too (by the same name),
    and a repo id finds the hub-cache folder, in the models folder or under HF_HOME."""
    from genserve.models.demo.single_files import write_hub_cache, write_snapshot
    from genserve.models.loaders import default_loaders
    from genserve.models.manager import ModelManager
    from genserve.models.registry import ModelRegistry

    root, hf_home = tmp_path / "models", tmp_path / "hf"
    write_snapshot(demo_models, root / "diffusion_models" / "Qwen-Image-Edit-2509")
    write_hub_cache(demo_models, hf_home / "hub", "genserve/demo-edit")
    registry = ModelRegistry(root, hf_home=hf_home)
    assert "Qwen-Image-Edit-2509" in registry.available(ModelKind.VAE)
    assert "genserve/demo-edit" in registry.available(ModelKind.TEXT_ENCODER)
    manager = ModelManager(registry, default_loaders(models_root=root, hf_home=hf_home), default_device="cpu")
    want = load_vae(entry(ModelKind.VAE, demo_models / "vae" / DEMO_VAE), CPU, F32).model.module.state_dict()
    try:
        for name in ("Qwen-Image-Edit-2509", "genserve/demo-edit"):
            for kind in (ModelKind.DIFFUSION, ModelKind.VAE, ModelKind.TEXT_ENCODER):
                stats = manager.load(kind, name)
                assert stats.loaded and stats.name == name, (kind, name)
            with manager.use(ModelKind.VAE, name) as vae:
                state = vae.module.state_dict()
                assert all(torch.equal(state[k], v) for k, v in want.items())
    finally:
        manager.close()
