"""Qwen-Image 2.1's VAE: the demo file in the real key layout loads through ``load_vae``, codes
RGB and RGBA images at 1/16 into 64 channels and back to RGBA, follows the architecture diffusers
describes, and is told apart from the other VAE files by its tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from PIL import Image
from safetensors.torch import load_file, save_file

from genserve.errors import GenserveError
from genserve.models.arch.qwen21_vae import (
    LATENTS_MEAN,
    LATENTS_STD,
    Qwen21Vae,
    Qwen21VaeConfig,
    average_down,
    duplicate_up,
)
from genserve.models.demo.qwen21_vae import DEMO_CONFIG, QWEN21_VAE, build_qwen21_vae
from genserve.models.formats import qwen21_vae, wan_vae
from genserve.models.formats.safetensors_header import read_header
from genserve.models.kinds import ModelEntry, ModelKind
from genserve.models.loaders.vae import Vae, load_vae
from genserve.services.pipeline.imaging import to_vae_input, vae_decode, vae_encode

CPU, F32 = torch.device("cpu"), torch.float32
FIELD = "vae_model_name"


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen21_vae(tmp_path_factory.mktemp("vae") / QWEN21_VAE, seed=0)


@pytest.fixture(scope="module")
def vae(demo_file: Path) -> Qwen21Vae:
    return load(demo_file).module


def load(path: Path, dtype: torch.dtype = F32) -> Vae:
    return load_vae(ModelEntry(ModelKind.VAE, path.name, path), CPU, dtype).model


def image(mode: str, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (64, 64, len(mode)), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), mode)


def rewritten(source: Path, target: Path, change: dict[str, torch.Tensor | None]) -> Path:
    """``source`` with some tensors replaced (a tensor) or dropped (None)."""
    state = load_file(source)
    for key, value in change.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    save_file(state, str(target))
    return target


# -- the file loads, and codes images ------------------------------------------------------------


def test_the_demo_file_loads_through_load_vae_with_the_config_its_shapes_give(demo_file: Path) -> None:
    loaded = load(demo_file)
    assert isinstance(loaded.module, Qwen21Vae)
    assert loaded.config == DEMO_CONFIG
    config = loaded.config
    assert (config.z_dim, config.input_channels, config.spatial_compression) == (64, 4, 16)
    assert list(loaded.config.latents_mean) == list(LATENTS_MEAN) and len(LATENTS_STD) == 64
    assert demo_file.stat().st_size < 4 << 20


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_64px_image_encodes_to_64_channels_at_a_sixteenth(vae: Qwen21Vae, mode: str) -> None:
    pixels = to_vae_input(image(mode), CPU, F32, vae.config.input_channels)
    assert pixels.shape == (1, 4, 1, 64, 64)
    latent = vae.encode(pixels).latent_dist.mode()
    assert latent.shape == (1, 64, 1, 4, 4)
    assert torch.isfinite(latent).all()


def test_a_latent_decodes_to_an_rgba_image_in_range(vae: Qwen21Vae) -> None:
    latent = torch.randn(1, 64, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 3
    decoded = vae.decode(latent, return_dict=False)[0]
    assert decoded.shape == (1, 4, 1, 64, 64)
    assert decoded.min() >= -1 and decoded.max() <= 1
    assert vae.decode(latent).sample.equal(decoded)


def test_genserve_encodes_and_decodes_through_its_own_vae_code(demo_file: Path) -> None:
    loaded = load(demo_file)
    latent = vae_encode(loaded, image("RGB"))
    assert latent.shape == (1, 64, 1, 4, 4)
    assert vae_encode(loaded, image("RGB")).equal(latent)  # the second comes from the cache
    decoded = vae_decode(loaded, latent)
    assert (decoded.mode, decoded.size) == ("RGBA", (64, 64))


def test_rgb_is_taken_as_opaque_rgba_and_alpha_is_read(vae: Qwen21Vae) -> None:
    rgb = to_vae_input(image("RGB"), CPU, F32, channels=3)
    padded = torch.cat([rgb, torch.ones_like(rgb[:, :1])], dim=1)  # alpha 255 -> 1.0 in [-1, 1]
    as_rgb = vae.encode(rgb).latent_dist.mode()
    assert as_rgb.equal(vae.encode(padded).latent_dist.mode())
    assert as_rgb.equal(vae.encode(to_vae_input(image("RGB"), CPU, F32, channels=4)).latent_dist.mode())
    half_clear = padded.clone()
    half_clear[:, 3, :, :, :32] = -1.0
    assert not vae.encode(half_clear).latent_dist.mode().equal(as_rgb)


def test_four_dimensional_tensors_and_a_batch_are_taken_too(vae: Qwen21Vae) -> None:
    pixels = torch.rand(2, 4, 1, 32, 48) * 2 - 1
    latent = vae.encode(pixels).latent_dist.mode()
    assert latent.shape == (2, 64, 1, 2, 3)
    assert vae.encode(pixels[:, :, 0]).latent_dist.mode().equal(latent)
    assert vae.decode(latent[:, :, 0], return_dict=False)[0].shape == (2, 4, 1, 32, 48)
    with pytest.raises(ValueError, match="multiple of 16"):
        vae.encode(torch.zeros(1, 4, 1, 40, 32))
    with pytest.raises(ValueError, match="one image"):
        vae.decode(torch.zeros(1, 64, 2, 4, 4))


def test_bf16_loads_and_runs(demo_file: Path) -> None:
    module = load(demo_file, torch.bfloat16).module
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    latent = module.encode(torch.zeros(1, 4, 1, 32, 32, dtype=torch.bfloat16)).latent_dist.mode()
    assert module.decode(latent, return_dict=False)[0].dtype == torch.bfloat16


def test_a_file_stored_2d_loads_the_same(demo_file: Path, vae: Qwen21Vae, tmp_path: Path) -> None:
    """The causal convolutions' temporal depth of 1 is dropped either way: 4-D files load too."""
    flat = qwen21_vae.to_module(load_file(demo_file))
    save_file(flat, str(tmp_path / "flat.safetensors"))
    other = load(tmp_path / "flat.safetensors").module
    pixels = torch.rand(1, 4, 1, 32, 32) * 2 - 1
    assert other.encode(pixels).latent_dist.mode().equal(vae.encode(pixels).latent_dist.mode())


# -- the file's layout -----------------------------------------------------------------------------


def test_the_demo_file_is_in_the_real_key_layout(demo_file: Path) -> None:
    header = read_header(demo_file)
    assert header.shape("encoder.conv1.weight") == (4, 4, 1, 3, 3)  # causal 3-D, temporal depth 1
    assert header.shape("encoder.downsamples.0.downsamples.0.residual.0.gamma") == (4, 1, 1, 1)
    assert header.shape("encoder.downsamples.0.downsamples.2.resample.1.weight") == (4, 4, 3, 3)
    assert header.shape("encoder.downsamples.1.downsamples.2.time_conv.weight") == (8, 8, 1, 1, 1)
    assert header.shape("decoder.upsamples.0.upsamples.3.time_conv.weight") == (96, 48, 1, 1, 1)
    assert header.shape("encoder.middle.1.to_qkv.weight") == (96, 32, 1, 1)
    assert header.shape("conv1.weight") == (128, 128, 1, 1, 1)
    assert header.shape("conv2.weight") == (64, 64, 1, 1, 1)
    assert header.shape("decoder.head.2.weight") == (4, 6, 1, 3, 3)
    assert not header.has("encoder.downsamples.0.downsamples.2.time_conv.weight")  # spatial only
    assert not header.has("decoder.upsamples.4.upsamples.3.resample.1.weight")  # the last keeps its size
    state = load_file(demo_file)
    assert qwen21_vae.from_module(qwen21_vae.to_module(state)).keys() == state.keys()
    assert all(qwen21_vae.from_module(qwen21_vae.to_module(state))[k].equal(v) for k, v in state.items())


# -- the architecture, against diffusers' description ----------------------------------------------


def test_the_real_config_has_the_widths_and_size_of_the_644_mib_file() -> None:
    config = Qwen21VaeConfig()
    assert config.encoder_dims() == [96, 96, 192, 384, 768, 768]  # base * ([1] + dim_mult)
    assert config.decoder_dims() == [1152, 1152, 1152, 576, 288, 144]  # base * ([mult[-1]] + reversed)
    assert [config.up_temporal(i) for i in range(5)] == [True, True, True, False, False]
    with init_empty_weights():
        module = Qwen21Vae(config)
    assert sum(p.numel() for p in module.parameters()) * 2 / 2**20 == pytest.approx(644.19, abs=0.01)


def test_the_shortcuts_are_pixel_unshuffle_and_shuffle_when_nothing_is_averaged() -> None:
    """diffusers' AvgDown3D / DupUp3D reduce to pixel (un)shuffle with one frame and one channel
    per group: the folding order is the same."""
    x = torch.randn(2, 8, 6, 4)
    assert average_down(x, 32, frames=1, factor=2).equal(F.pixel_unshuffle(x, 2))
    assert duplicate_up(x, 2, frames=1, factor=2).equal(F.pixel_shuffle(x, 2))
    assert average_down(x, 8, frames=1, factor=1).equal(x)  # the last encoder level


def test_a_temporal_shortcut_folds_the_causal_padding_frame_first() -> None:
    """AvgDown3D (in * 8 / out = 4 per group): the padded frame's block, then the image's; DupUp3D
    with a first chunk keeps the last of the two frames it unfolds."""
    x = torch.randn(1, 3, 4, 4)
    down = average_down(x, 6, frames=2, factor=2)
    assert down[:, 0::2].abs().max() == 0
    assert torch.allclose(down[:, 1::2], F.avg_pool2d(x, 2))
    y = torch.randn(1, 6, 2, 3)
    up = duplicate_up(y, 3, frames=2, factor=2)  # repeats = 3 * 8 / 6 = 4
    for out in range(3):
        for i in range(2):
            for j in range(2):
                source = (out * 8 + 4 + i * 2 + j) // 4  # [out, frame 1, i, j] of the repeated channels
                assert up[0, out, i::2, j::2].equal(y[0, source])


def test_the_posterior_is_the_encoders_mean_and_variance(vae: Qwen21Vae) -> None:
    distribution = vae.encode(torch.zeros(1, 4, 1, 16, 16)).latent_dist
    assert distribution.mode().equal(distribution.mean)
    assert distribution.logvar.shape == distribution.mean.shape == (1, 64, 1, 1, 1)
    sample = distribution.sample(torch.Generator().manual_seed(0))
    assert sample.shape == (1, 64, 1, 1, 1) and not sample.equal(distribution.mean)


# -- telling the files apart, refusing broken ones -----------------------------------------------


def test_the_qwen_image_wan_vae_is_not_taken_for_it(tmp_path: Path) -> None:
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(0)
    small = AutoencoderKLQwenImage(base_dim=4, z_dim=4, input_channels=4)  # the real levels, narrow
    path = tmp_path / "qwen_image_layered_vae.safetensors"
    save_file({k: v.contiguous() for k, v in wan_vae.from_diffusers(small.state_dict()).items()}, str(path))
    header = read_header(path)
    assert wan_vae.is_wan_vae(header) and not qwen21_vae.is_qwen21_vae(header)
    assert isinstance(load(path).module, AutoencoderKLQwenImage)


def test_the_qwen21_file_is_taken_first_though_it_has_the_wan_marker(demo_file: Path) -> None:
    header = read_header(demo_file)
    assert qwen21_vae.is_qwen21_vae(header) and wan_vae.is_wan_vae(header)


def test_a_patchified_wan22_layout_file_is_refused_naming_the_field(demo_file: Path, tmp_path: Path) -> None:
    patchified = {"encoder.conv1.weight": torch.zeros(4, 12, 1, 3, 3)}  # RGB in 2x2 patches
    path = rewritten(demo_file, tmp_path / "wan2.2_vae.safetensors", patchified)
    assert not qwen21_vae.is_qwen21_vae(read_header(path))
    with pytest.raises(GenserveError, match=r"Wan-2\.2 layout") as refused:
        load(path)
    assert refused.value.details["field"] == FIELD


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"conv2.weight": torch.zeros(48, 48, 1, 1, 1)}, "48 latent channels"),
        ({"decoder.head.0.gamma": None}, "no decoder.head.0.gamma"),
        ({"decoder.upsamples.1.upsamples.3.time_conv.weight": None}, "temporal levels"),
        ({"decoder.upsamples.4.upsamples.2.residual.6.weight": None}, "residual block 2"),
    ],
)
def test_a_malformed_file_is_refused_naming_the_field(
    demo_file: Path, tmp_path: Path, change: dict[str, torch.Tensor | None], reason: str
) -> None:
    path = rewritten(demo_file, tmp_path / "broken.safetensors", change)
    with pytest.raises(GenserveError, match=reason) as refused:
        load(path)
    assert refused.value.details["field"] == FIELD
    assert "not a whole Qwen-Image 2.1 VAE" in str(refused.value)


def test_a_missing_weight_is_refused_by_the_key_match(demo_file: Path, tmp_path: Path) -> None:
    path = rewritten(demo_file, tmp_path / "broken.safetensors", {"encoder.middle.1.proj.weight": None})
    with pytest.raises(GenserveError, match=r"missing encoder\.middle\.1\.proj\.weight") as refused:
        load(path)
    assert refused.value.details["field"] == FIELD


def test_a_truncated_file_is_refused_naming_the_field(demo_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(demo_file.read_bytes()[: demo_file.stat().st_size // 2])
    with pytest.raises(GenserveError) as refused:
        load(path)
    assert refused.value.details["field"] == FIELD
