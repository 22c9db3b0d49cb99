"""Qwen-Image 2.1's VAE: RGBA images to 64-channel latents at 1/16 of the image's sides, and back.

The network is the Wan-2.2 VAE's residual design (levels whose shortcut averages pixels down
into channels or duplicates channels up into pixels) with 2-D convolutions: it codes single
images. The original network is causal in time; on one frame every convolution's temporal taps
see only zero padding but the last, and the temporal resamplers' ``time_conv`` is never reached
(ComfyUI's single-image path and diffusers' first chunk both skip it), so this module is plain
2-D. It keeps the ``time_conv`` weights all the same, as diffusers does, so the single file loads
key for key and a file missing them is refused as malformed.

The module names are the single file's (``encoder.downsamples.N.downsamples.M.residual.2``, ...)
and the interface is the one genserve uses for diffusers' ``AutoencoderKLQwenImage``: 5-D
``[B, C, 1, H, W]`` tensors in and out, ``encode(x).latent_dist.mode()``,
``decode(z, return_dict=False)[0]``, and ``config.z_dim`` / ``latents_mean`` / ``latents_std`` /
``input_channels``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# ComfyUI's latent_formats.QwenImage21 (and diffusers' defaults): the latents the transformer
# sees are (z - mean) / std, per channel. Model constants; the file does not carry them.
LATENTS_MEAN: tuple[float, ...] = (
    0.5126, 0.7721, -0.0631, 1.3506, -0.7855, -2.1025, -0.3458, 1.3722,
    1.8873, -1.7177, -0.6510, 0.2732, 0.7562, -0.6163, -1.0277, 3.8363,
    2.0210, 0.0472, 0.9320, 2.0087, 2.4954, -0.1391, -1.4249, 1.8464,
    -0.5236, 1.2826, 3.7046, -1.3035, 2.7286, -1.4518, -1.9036, -1.9955,
    -0.0342, -1.0265, -0.7636, 3.0555, 0.0746, -3.0751, -0.1076, 1.7376,
    -1.0914, -1.9435, -0.2784, -1.3680, 0.4809, -0.4433, 0.3764, 0.5729,
    -2.0595, 1.0960, -1.3260, -2.0211, -5.0179, 0.5275, 4.0162, 1.8505,
    0.3026, 1.9373, 1.4937, 0.2632, 0.5547, -1.7121, -0.1562, 0.0304,
)  # fmt: skip
LATENTS_STD: tuple[float, ...] = (
    3.2001, 3.2936, 3.4321, 3.0091, 3.1061, 4.0379, 4.0705, 3.7910,
    3.0785, 3.6500, 3.9308, 3.0904, 2.8778, 3.7675, 3.7320, 5.0756,
    3.2864, 4.0397, 3.1317, 4.0443, 2.9249, 3.9454, 3.0988, 4.2489,
    3.4896, 3.8513, 3.9323, 3.4719, 3.7498, 4.2830, 3.5694, 4.2467,
    3.9037, 3.2947, 5.0770, 3.5075, 3.2700, 3.4767, 2.8063, 5.1125,
    3.5327, 4.7833, 3.1286, 4.1819, 3.8527, 3.8312, 3.5605, 4.3875,
    3.9624, 4.0168, 3.5643, 4.0550, 5.5614, 4.2963, 4.4080, 3.4959,
    3.8747, 3.7608, 3.5735, 3.1490, 3.7662, 3.6746, 3.4563, 3.8161,
)  # fmt: skip
OPAQUE = 1.0  # alpha of an image without one, in the VAE's [-1, 1] range (ComfyUI pads 1.0 in [0, 1])


@dataclass(frozen=True)
class Qwen21VaeConfig:
    """The real file's values as defaults; ``formats.qwen21_vae.derive_config`` reads each from
    the tensors' shapes, so a tiny demo file builds through the same code."""

    base_dim: int = 96
    decoder_base_dim: int = 144
    z_dim: int = 64
    dim_mult: tuple[int, ...] = (1, 2, 4, 8, 8)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True, True)  # diffusers' spelling
    input_channels: int = 4
    output_channels: int = 4
    latents_mean: tuple[float, ...] = field(default=LATENTS_MEAN, repr=False)
    latents_std: tuple[float, ...] = field(default=LATENTS_STD, repr=False)

    @property
    def spatial_compression(self) -> int:
        """Image pixels per latent pixel along each side: every level but the last halves them."""
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def scale_factor_spatial(self) -> int:  # diffusers' name for the same number
        return self.spatial_compression

    def encoder_dims(self) -> list[int]:
        return [self.base_dim * m for m in (1, *self.dim_mult)]

    def decoder_dims(self) -> list[int]:
        return [self.decoder_base_dim * m for m in (self.dim_mult[-1], *reversed(self.dim_mult))]

    def down_temporal(self, level: int) -> bool:
        """Whether an encoder level also halved time in the video network (it has a ``time_conv``)."""
        last = len(self.dim_mult) - 1
        return level < last and level < len(self.temperal_downsample) and self.temperal_downsample[level]

    def up_temporal(self, level: int) -> bool:
        """The decoder mirrors the encoder: its flags are the encoder's reversed."""
        flags = tuple(reversed(self.temperal_downsample))
        return level < len(self.dim_mult) - 1 and level < len(flags) and flags[level]


class RmsNorm(nn.Module):
    """Wan's channel RMS norm (no bias): x / ||x||_channels * sqrt(C) * gamma, in float32 for
    half-precision inputs, whose squares would lose the small channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = math.sqrt(channels)
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalised = F.normalize(x.float(), dim=1).to(x.dtype)
        return normalised * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """``residual`` keeps the original Sequential's indices (0 norm, 2 conv, 3 norm, 6 conv), which
    are the file's key names; the SiLUs and the (inference-idle) dropout sit between."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RmsNorm(in_dim),
            nn.SiLU(),
            nn.Conv2d(in_dim, out_dim, 3, padding=1),
            RmsNorm(out_dim),
            nn.SiLU(),
            nn.Identity(),
            nn.Conv2d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut: nn.Module = nn.Conv2d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of the lowest level."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RmsNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(batch, 1, channels * 3, height * width).transpose(-1, -2)
        query, key, value = qkv.chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(query.contiguous(), key.contiguous(), value.contiguous())
        attended = attended.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj(attended)


def _middle(dim: int) -> nn.Sequential:
    """Indices 0, 1, 2 as in the file: residual, attention, residual."""
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


class Resample(nn.Module):
    """A level's stride-2 3x3 down (zero-padded right and bottom) or nearest x2 then 3x3 up; index 1
    of ``resample`` is the convolution, as in the file. ``time_conv`` (temporal levels only) is
    held for the key match and never applied to a single frame."""

    def __init__(self, dim: int, up: bool, temporal: bool) -> None:
        super().__init__()
        self.up = up
        if up:
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest-exact"), nn.Conv2d(dim, dim, 3, padding=1)
            )
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if temporal:
            self.time_conv = nn.Conv2d(dim, dim * 2 if up else dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:  # nearest-exact in float32, as diffusers' and ComfyUI's, whatever the dtype
            return self.resample[1](self.resample[0](x.float()).to(x.dtype))
        return self.resample(x)


def average_down(x: torch.Tensor, out_channels: int, frames: int, factor: int) -> torch.Tensor:
    """The encoder shortcut: each ``factor`` x ``factor`` pixel block (over ``frames`` frames, the
    first ``frames - 1`` of them the causal zero padding before a single image) folded into channels,
    then those channels averaged in groups down to ``out_channels``."""
    batch, channels, height, width = x.shape
    clip = x.unsqueeze(2)
    if frames > 1:
        clip = torch.cat([x.new_zeros(batch, channels, frames - 1, height, width), clip], dim=2)
    blocks = clip.reshape(batch, channels, frames, height // factor, factor, width // factor, factor)
    folded = blocks.permute(0, 1, 2, 4, 6, 3, 5).reshape(
        batch, out_channels, -1, height // factor, width // factor
    )
    return folded.mean(dim=2)


def duplicate_up(x: torch.Tensor, out_channels: int, frames: int, factor: int) -> torch.Tensor:
    """The decoder shortcut, the inverse move: channels repeated, then unfolded into ``factor`` x
    ``factor`` pixel blocks over ``frames`` frames, of which a single image keeps the last."""
    batch, channels, height, width = x.shape
    repeats = out_channels * frames * factor * factor // channels
    spread = x.repeat_interleave(repeats, dim=1).reshape(
        batch, out_channels, frames, factor, factor, height, width
    )
    last = spread[:, :, -1]
    return last.permute(0, 1, 4, 2, 5, 3).reshape(batch, out_channels, height * factor, width * factor)


class DownLevel(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, blocks: int, down: bool, temporal: bool) -> None:
        super().__init__()
        self.out_dim, self.down, self.frames = out_dim, down, 2 if temporal else 1
        layers: list[nn.Module] = [
            ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(blocks)
        ]
        if down:
            layers.append(Resample(out_dim, up=False, temporal=temporal))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = average_down(x, self.out_dim, self.frames, 2 if self.down else 1)
        return self.downsamples(x) + shortcut


class UpLevel(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, blocks: int, up: bool, temporal: bool) -> None:
        super().__init__()
        self.out_dim, self.up, self.frames = out_dim, up, 2 if temporal else 1
        layers: list[nn.Module] = [
            ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(blocks)
        ]
        if up:
            layers.append(Resample(out_dim, up=True, temporal=temporal))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.upsamples(x)
        return out + duplicate_up(x, self.out_dim, self.frames, 2) if self.up else out


def _head(dim: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(RmsNorm(dim), nn.SiLU(), nn.Conv2d(dim, out_channels, 3, padding=1))


class Encoder(nn.Module):
    def __init__(self, config: Qwen21VaeConfig) -> None:
        super().__init__()
        dims = config.encoder_dims()
        last = len(config.dim_mult) - 1
        self.conv1 = nn.Conv2d(config.input_channels, dims[0], 3, padding=1)
        self.downsamples = nn.Sequential(
            *(
                DownLevel(dims[i], dims[i + 1], config.num_res_blocks, i != last, config.down_temporal(i))
                for i in range(len(config.dim_mult))
            )
        )
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], config.z_dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.middle(self.downsamples(self.conv1(x))))


class Decoder(nn.Module):
    def __init__(self, config: Qwen21VaeConfig) -> None:
        super().__init__()
        dims = config.decoder_dims()
        last = len(config.dim_mult) - 1
        self.conv1 = nn.Conv2d(config.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        self.upsamples = nn.Sequential(
            *(
                UpLevel(dims[i], dims[i + 1], config.num_res_blocks + 1, i != last, config.up_temporal(i))
                for i in range(len(config.dim_mult))
            )
        )
        self.head = _head(dims[-1], config.output_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.upsamples(self.middle(self.conv1(z))))


@dataclass
class LatentDistribution:
    """The encoder's diagonal Gaussian; genserve takes its mode (the mean), so encodings are
    deterministic and cacheable."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        std = torch.exp(0.5 * self.logvar.clamp(-30.0, 20.0))
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + std * noise


@dataclass
class EncodeOutput:
    latent_dist: LatentDistribution


@dataclass
class DecodeOutput:
    sample: torch.Tensor


class Qwen21Vae(nn.Module):
    """The whole VAE; ``conv1`` / ``conv2`` are the file's names for diffusers' ``quant_conv`` /
    ``post_quant_conv``."""

    def __init__(self, config: Qwen21VaeConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.conv1 = nn.Conv2d(config.z_dim * 2, config.z_dim * 2, 1)
        self.conv2 = nn.Conv2d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)

    def encode(
        self, pixels: torch.Tensor, return_dict: bool = True
    ) -> EncodeOutput | tuple[LatentDistribution]:
        """``[B, 3 or 4, 1, H, W]`` in [-1, 1] (H and W multiples of ``spatial_compression``) ->
        the distribution of ``[B, z_dim, 1, H/16, W/16]``. RGB gets an opaque alpha, as ComfyUI
        pads a missing channel; ``[B, C, H, W]`` is taken too."""
        image = _single_frame(pixels, "pixels")
        channels = self.config.input_channels
        if image.shape[1] < channels:
            pad = image.new_full((image.shape[0], channels - image.shape[1], *image.shape[2:]), OPAQUE)
            image = torch.cat([image, pad], dim=1)
        elif image.shape[1] > channels:
            image = image[:, :channels]
        side = self.config.spatial_compression
        if image.shape[-2] % side or image.shape[-1] % side:
            raise ValueError(
                f"pixels: {image.shape[-1]}x{image.shape[-2]} is not a multiple of {side} on each side"
            )
        moments = self.conv1(self.encoder(image)).unsqueeze(2)
        mean, logvar = moments.chunk(2, dim=1)
        distribution = LatentDistribution(mean, logvar)
        return EncodeOutput(distribution) if return_dict else (distribution,)

    def decode(self, latent: torch.Tensor, return_dict: bool = True) -> DecodeOutput | tuple[torch.Tensor]:
        """``[B, z_dim, 1, h, w]`` (or ``[B, z_dim, h, w]``), not normalised -> ``[B, 4, 1, 16h,
        16w]`` in [-1, 1]."""
        z = _single_frame(latent, "latent")
        image = self.decoder(self.conv2(z)).clamp(-1.0, 1.0).unsqueeze(2)
        return DecodeOutput(image) if return_dict else (image,)


def _single_frame(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 4:
        return x
    if x.dim() == 5 and x.shape[2] == 1:
        return x[:, :, 0]
    raise ValueError(f"{name}: expected [B, C, 1, H, W] or [B, C, H, W] (one image), got {list(x.shape)}")
