"""Qwen-Image 2.1's transformer: the prefix cache gives the full sequence's result, the prefix never
depends on the target, references sit at their slots, and ComfyUI's files (bf16, int8 ConvRot,
diffusers' unfused MLP) load through the real loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genserve.errors import GenserveError
from genserve.models.arch.prefix_cache import CacheOptions, make_cache
from genserve.models.arch.qwen21_transformer import Qwen21Config, Qwen21Transformer, _image_ids
from genserve.models.demo.qwen21 import QWEN21_TRANSFORMER, QWEN21_TRANSFORMER_INT8, build_qwen21_transformer
from genserve.models.demo.single_files import write
from genserve.models.formats import qwen21_transformer
from genserve.models.formats.safetensors_header import read_header
from genserve.models.loaders.transformer import is_qwen21, is_qwen21_file, load_transformer
from genserve.models.registry import ModelEntry, ModelKind

CPU = torch.device("cpu")
TINY = Qwen21Config(
    in_channels=8,
    out_channels=8,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    context_in_dim=24,
    mlp_hidden_dim=48,
    axes_dims_rope=(4, 6, 6),
)


@pytest.fixture(scope="module")
def model() -> Qwen21Transformer:
    torch.manual_seed(0)
    m = Qwen21Transformer(TINY).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return m


def _inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(batch, 8, 3, 4, generator=g),
        "timestep": torch.full((batch,), 0.7),
        "context": torch.randn(1, 10, 24, generator=g),
        "ref_latents": [torch.randn(1, 8, 2, 2, generator=g), torch.randn(1, 8, 3, 3, generator=g)],
        "image_slots": [3, 6],
    }


@torch.no_grad()
def test_the_prefix_cache_gives_the_full_sequences_result_at_every_step(model: Qwen21Transformer) -> None:
    args = _inputs()
    full = model(**args)
    cache = make_cache(CacheOptions(), CPU)
    first = model(**args, cache=cache)
    assert cache is not None and cache.filled
    later = model(**{**args, "timestep": torch.full((2,), 0.3)}, cache=cache)
    assert torch.allclose(first, full, atol=1e-5)
    assert torch.allclose(later, model(**{**args, "timestep": torch.full((2,), 0.3)}), atol=1e-5)


@torch.no_grad()
def test_the_prefix_never_depends_on_the_target(model: Qwen21Transformer) -> None:
    """A cache filled under one target serves another target of the same shape exactly."""
    args = _inputs()
    cache = make_cache(CacheOptions(), CPU)
    model(**args, cache=cache)
    other = {**args, "x": torch.randn_like(args["x"])}
    assert torch.allclose(model(**other, cache=cache), model(**other), atol=1e-5)


@torch.no_grad()
def test_quantised_caches_are_smaller_and_close(model: Qwen21Transformer) -> None:
    args = _inputs()
    full = model(**args)
    sizes, errors = {}, {}
    for dtype in ("default", "int8", "int4"):
        cache = make_cache(CacheOptions(dtype=dtype), CPU)
        out = model(**args, cache=cache)
        out = model(**args, cache=cache)  # served from the cache
        sizes[dtype], errors[dtype] = cache.nbytes(), float((out - full).abs().mean())
    assert sizes["int8"] < sizes["default"] / 1.5 and sizes["int4"] < sizes["int8"]
    assert errors["default"] < 1e-5 < errors["int8"] < errors["int4"] < 0.5 * float(full.abs().mean())
    assert make_cache(CacheOptions(device="off"), CPU) is None


@torch.no_grad()
def test_each_image_of_a_batch_is_its_own(model: Qwen21Transformer) -> None:
    args = _inputs(batch=2)
    both = model(**args)
    one = model(**{**args, "x": args["x"][1:], "timestep": args["timestep"][1:]})
    assert torch.allclose(both[1:], one, atol=1e-5)


@torch.no_grad()
def test_references_and_their_slots_change_the_result(model: Qwen21Transformer) -> None:
    args = _inputs()
    base = model(**args)
    assert not torch.allclose(base, model(**{**args, "image_slots": [0, 9]}), atol=1e-3)
    assert not torch.allclose(base, model(**{**args, "ref_latents": args["ref_latents"][:1]}), atol=1e-3)
    # a reference without a slot goes after the text: the same as giving it the text's end
    assert torch.allclose(model(**{**args, "image_slots": [3]}), model(**{**args, "image_slots": [3, 10]}))


def test_reference_rope_ids_centre_on_the_target() -> None:
    even = _image_ids(4, 4, 4, 4, 5.0, CPU)
    assert even[:, 0].eq(5).all() and even[:, 1].unique().tolist() == [-2, -1, 0, 1]
    odd = _image_ids(3, 3, 4, 4, 0.0, CPU)  # an odd grid on an even target: half a token over
    assert odd[:, 1].unique().tolist() == [-1.5, -0.5, 0.5]


def _entry(path: Path) -> ModelEntry:
    return ModelEntry(kind=ModelKind.DIFFUSION, name=path.name, path=path)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("diffusion_models")
    build_qwen21_transformer(folder, context_dim=32, seed=0)
    return folder


@torch.no_grad()
def test_comfyui_files_load_bf16_and_int8_convrot_alike(demo_files: Path) -> None:
    plain = load_transformer(_entry(demo_files / QWEN21_TRANSFORMER), CPU, torch.float32).model
    quant = load_transformer(_entry(demo_files / QWEN21_TRANSFORMER_INT8), CPU, torch.float32).model
    assert is_qwen21(plain.transformer) and is_qwen21_file(demo_files / QWEN21_TRANSFORMER_INT8)
    g = torch.Generator().manual_seed(2)
    x, context = torch.randn(1, 64, 4, 4, generator=g), torch.randn(1, 6, 32, generator=g)
    a = plain.transformer(x, torch.tensor([0.5]), context)
    b = quant.transformer(x, torch.tensor([0.5]), context)
    assert a.shape == (1, 64, 4, 4)
    assert float((a - b).abs().mean()) < 0.05 * float(a.abs().mean())  # int8's rounding, no more


@torch.no_grad()
def test_a_diffusers_layout_file_with_the_mlp_unfused_loads_the_same(
    demo_files: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    state = load_file(str(demo_files / QWEN21_TRANSFORMER))
    unfused = {}
    for key, value in state.items():
        if key.endswith("img_mlp.gate_up.weight"):
            gate, up = value.chunk(2, dim=0)
            unfused[key.replace("gate_up", "gate_layer")] = gate
            unfused[key.replace("gate_up", "proj")] = up
        else:
            unfused[key] = value
    path = write(tmp_path / "unfused.safetensors", unfused)
    header = read_header(path, "unet_name")
    assert qwen21_transformer.derive_config(header).mlp_hidden_dim == 768
    fused = load_transformer(_entry(demo_files / QWEN21_TRANSFORMER), CPU, torch.float32).model.transformer
    split = load_transformer(_entry(path), CPU, torch.float32).model.transformer
    for (name, a), (_, b) in zip(fused.state_dict().items(), split.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_qwen_image_file_is_not_taken_for_2_1_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    qwen = write(
        tmp_path / "old.safetensors", {"txt_norm.weight": torch.ones(4), "img_in.weight": torch.ones(8, 4)}
    )
    assert not is_qwen21_file(qwen)
    broken = write(
        tmp_path / "broken.safetensors",
        {"txt_in.text_norm.weight": torch.ones(4), "img_in.weight": torch.ones(8, 4)},
    )
    assert is_qwen21_file(broken)
    with pytest.raises(GenserveError, match=r"not a Qwen-Image 2\.1 diffusion model"):
        load_transformer(_entry(broken), CPU, torch.float32)


def test_listings_name_the_2_1_files_by_family(tmp_path: Path) -> None:
    from genserve.models.demo.qwen21 import (
        QWEN21_ENHANCER_I2I,
        QWEN21_TEXT_ENCODER,
        QWEN21_VAE,
        build_qwen21_set,
    )
    from genserve.models.describe import describe

    build_qwen21_set(tmp_path)
    cases = [
        (
            ModelKind.DIFFUSION,
            tmp_path / "diffusion_models" / QWEN21_TRANSFORMER_INT8,
            "Qwen-Image 2.1, prefixed keys, int8",
        ),
        (ModelKind.VAE, tmp_path / "vae" / QWEN21_VAE, "Qwen-Image 2.1 VAE"),
        (ModelKind.TEXT_ENCODER, tmp_path / "text_encoders" / QWEN21_TEXT_ENCODER, "(Qwen3-VL)"),
        (ModelKind.LLM, tmp_path / "text_encoders" / QWEN21_ENHANCER_I2I, "Qwen3.5 vision-language"),
    ]
    for kind, path, expected in cases:
        fmt, _ = describe(ModelEntry(kind=kind, name=path.name, path=path))
        assert expected in fmt, (path.name, fmt)
