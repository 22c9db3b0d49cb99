"""Qwen-Image 2.1's diffusion transformer, with the module names of ComfyUI's single files.

A single-stream DiT: the prompt's hidden states and each reference image's latent tokens form
one sequence with the target image's tokens last. References sit where their vision tokens were in
the prompt (``image_slots``). Attention is block-causal: a text token sees what comes before it,
an image token sees everything up to the end of its own image. Text and references modulate with
the timestep embedding of t = 0, so the prefix before the target never depends on the step or on
the target's values: its keys and values can be computed once per sampling run
(``PrefixCache``) and each later step runs the target's tokens only. The result is the same as
the full sequence's, up to rounding.

The locked diffusers has no such model, so genserve holds it, written from the published design
(diffusers' ``QwenImage21Transformer2DModel`` and ComfyUI's port). The config comes from the file's
shapes, so the 20B-class file and genserve's tiny demo load through the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genserve.models.arch.prefix_cache import PrefixCache

ROPE_THETA = 10000.0


@dataclass(frozen=True)
class Qwen21Config:
    in_channels: int = 64
    out_channels: int = 64
    num_layers: int = 32
    attention_head_dim: int = 128
    num_attention_heads: int = 32
    context_in_dim: int = 4096
    mlp_hidden_dim: int = 12288
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    time_bias: bool = False
    eps: float = 1e-6

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


class ZeroCenteredRMSNorm(nn.Module):
    """RMSNorm whose stored weight is ``scale - 1`` (the checkpoints store it so), applied in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (self.weight.float() + 1.0)).to(x.dtype)


class TextProjection(nn.Module):
    def __init__(self, in_dim: int, dim: int, eps: float) -> None:
        super().__init__()
        self.text_norm = ZeroCenteredRMSNorm(in_dim, eps)
        self.in_layer = nn.Linear(in_dim, dim, bias=False)
        self.out_layer = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.gelu(self.in_layer(self.text_norm(x)), approximate="tanh"))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, bias: bool) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(256, dim, bias=bias)
        self.linear_2 = nn.Linear(dim, dim, bias=bias)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        half = 128
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = 1000.0 * t.float()[:, None] * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype)
        return self.linear_2(F.silu(self.linear_1(embedding)))


class TimeTextEmbed(nn.Module):
    """Holds the embedder under ComfyUI's key names (``time_text_embed.timestep_embedder.*``)."""

    def __init__(self, dim: int, bias: bool) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim, bias)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=False)])
        self.norm_q = nn.RMSNorm(head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(head_dim, eps=eps)

    def qkv(self, x: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys (normed, rotated) and values as [B, heads, N, head_dim]."""
        b, n, _ = x.shape
        q = self.norm_q(self.to_q(x).view(b, n, self.heads, -1))
        k = self.norm_k(self.to_k(x).view(b, n, self.heads, -1))
        v = self.to_v(x).view(b, n, self.heads, -1)
        return apply_rope(q, rope).transpose(1, 2), apply_rope(k, rope).transpose(1, 2), v.transpose(1, 2)

    def out(self, attended: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = attended.shape
        return self.to_out[0](attended.transpose(1, 2).reshape(b, n, -1))


class SwiGLU(nn.Module):
    """ComfyUI's files fuse the gate and up projections into ``gate_up`` (gate first)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.out(F.silu(gate) * up)


@dataclass
class Modulation:
    """Per-block scales and gates: the t = 0 row for the prefix, the sampled rows for the target."""

    prefix: tuple[torch.Tensor, ...]  # scale1, gate1, scale2, gate2: each [1, 1, dim]
    target: tuple[torch.Tensor, ...]  # each [B, 1, dim]

    def rows(self, prefix_len: int, total: int) -> tuple[torch.Tensor, ...]:
        """Each parameter for a sequence whose first ``prefix_len`` of ``total`` rows are prefix."""
        if prefix_len == 0:
            return self.target
        if prefix_len == total:
            return self.prefix
        return tuple(
            torch.cat([p.expand(t.shape[0], prefix_len, -1), t.expand(-1, total - prefix_len, -1)], dim=1)
            for p, t in zip(self.prefix, self.target, strict=True)
        )


class Block(nn.Module):
    def __init__(self, config: Qwen21Config) -> None:
        super().__init__()
        dim = config.inner_dim
        self.img_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=config.eps)
        self.attn = Attention(dim, config.num_attention_heads, config.attention_head_dim, config.eps)
        self.img_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=config.eps)
        self.img_mlp = SwiGLU(dim, config.mlp_hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        mod: tuple[torch.Tensor, ...],
        rope: torch.Tensor,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One block over ``x``; ``past`` (keys, values of an earlier prefix) are attended to before
        ``x``'s own. Returns the new ``x`` and ``x``'s own keys and values."""
        scale1, gate1, scale2, gate2 = mod
        q, k, v = self.attn.qkv(self.img_norm1(x) * (1 + scale1), rope)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + gate1 * self.attn.out(attended)
        x = x + gate2 * self.img_mlp(self.img_norm2(x) * (1 + scale2))
        return x, (k, v)


class LastLayer(nn.Module):
    """Scale only, no shift."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim, eps, elementwise_affine=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + self.linear(F.silu(temb)).unsqueeze(1))


@dataclass
class Sequence:
    """The prefix's input tokens, and the whole sequence's rope rotations and attention limits."""

    prefix: torch.Tensor  # [1 or B, P, dim]: text and references
    rope: torch.Tensor  # [P + H*W, head_dim / 2] complex
    limits: torch.Tensor  # [P + H*W]: token i attends to keys [0, limits[i])
    target_frame: float  # the target image's position on the frame axis


class Qwen21Transformer(nn.Module):
    def __init__(self, config: Qwen21Config) -> None:
        super().__init__()
        self.config = config
        dim = config.inner_dim
        self.time_text_embed = TimeTextEmbed(dim, config.time_bias)
        self.txt_in = TextProjection(config.context_in_dim, dim, config.eps)
        self.img_in = nn.Linear(config.in_channels, dim, bias=False)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 4 * dim, bias=False))
        self.transformer_blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.norm_out = LastLayer(dim, config.eps)
        self.proj_out = nn.Linear(dim, config.out_channels, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        ref_latents: list[torch.Tensor] | None = None,
        image_slots: list[int] | None = None,
        cache: PrefixCache | None = None,
    ) -> torch.Tensor:
        """``x`` [B, C, H, W] at ``timestep`` [B] (sigma in [0, 1]) under ``context`` [1 or B, T, D]
        (the text encoder's hidden states) and ``ref_latents`` (each [1 or B, C, h, w],
        normalised); returns the flow velocity [B, C, H, W]. With ``cache``, the prefix's keys and
        values are taken from it, or computed into it on its first use."""
        b, c, h, w = x.shape
        dtype = x.dtype
        # The reference pipeline rounds t * 1000 and t to the compute dtype.
        t = ((timestep * 1000).to(dtype) / 1000).to(dtype)
        temb = self.time_text_embed.timestep_embedder(torch.cat([t, t.new_zeros(1)]), dtype)
        params = [p.unsqueeze(1) for p in self.modulation(temb).chunk(4, dim=-1)]
        params[1], params[3] = params[1].tanh(), params[3].tanh()
        mod = Modulation(prefix=tuple(p[-1:] for p in params), target=tuple(p[:-1] for p in params))

        target = self.img_in(x.flatten(2).transpose(1, 2))
        if cache is not None and cache.filled_for((b, h, w)):
            rope = self.target_rope(h, w, cache.target_frame, x.device)
            for i, block in enumerate(self.transformer_blocks):
                target, _ = block(target, mod.target, rope, None, cache.take(i, x.device, dtype, b))
        else:
            seq = self.build_sequence(x, context, list(ref_latents or []), list(image_slots or []))
            target = self._run(seq, target, mod, cache, (b, h, w), dtype)
        out = self.proj_out(self.norm_out(target, temb[:-1]))
        return out.transpose(1, 2).reshape(b, c, h, w)

    def _run(
        self,
        seq: Sequence,
        target: torch.Tensor,
        mod: Modulation,
        cache: PrefixCache | None,
        shape: tuple[int, int, int],
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The blocks over the whole sequence; the target's rows come back. With a cache, the prefix
        runs on its own first (it never attends to the target: same values) at the prompt's batch
        size, and its keys and values are kept for the later steps."""
        batch, p = shape[0], seq.prefix.shape[1]
        if cache is None or p == 0:
            hidden = torch.cat([seq.prefix.expand(batch, -1, -1), target], dim=1)
            mask, rows = _mask(seq.limits, seq.limits.shape[0]), mod.rows(p, hidden.shape[1])
            for block in self.transformer_blocks:
                hidden, _ = block(hidden, rows, seq.rope, mask)
            return hidden[:, p:]
        cache.start(shape, seq.target_frame, len(self.transformer_blocks))
        prefix, prefix_mask = seq.prefix, _mask(seq.limits[:p], p)
        for i, block in enumerate(self.transformer_blocks):
            prefix, kv = block(prefix, mod.prefix, seq.rope[:p], prefix_mask)
            cache.put(i, kv)
            target, _ = block(
                target, mod.target, seq.rope[p:], None, cache.take(i, target.device, dtype, batch)
            )
        cache.finish()
        return target

    def build_sequence(
        self, x: torch.Tensor, context: torch.Tensor, refs: list[torch.Tensor], slots: list[int]
    ) -> Sequence:
        """Text with each reference spliced in at its slot (a reference without one goes after the
        text), then the target. Rope ids: a text token's position on all three axes; an image's
        frame axis at the running position, its rows and columns centred on the target's grid."""
        device = x.device
        text = self.txt_in(context.to(x.dtype))
        length = text.shape[1]
        slots = (slots + [length] * len(refs))[: len(refs)]
        bounds = [0, *slots, length]
        target_h, target_w = x.shape[-2:]
        parts: list[torch.Tensor] = []
        ids: list[torch.Tensor] = []
        limits: list[torch.Tensor] = []
        position, total = 0, 0
        for start, end, image in zip(bounds[:-1], bounds[1:], refs, strict=False):
            n = end - start
            if n > 0:
                parts.append(text[:, start:end])
                ids.append(_text_ids(position, n, device))
                limits.append(torch.arange(total + 1, total + n + 1, device=device))
                position, total = position + n, total + n
            h, w = image.shape[-2:]
            parts.append(self.img_in(image.to(x.dtype).flatten(2).transpose(1, 2)))
            ids.append(_image_ids(h, w, target_h, target_w, position, device))
            limits.append(torch.full((h * w,), total + h * w, device=device))
            position, total = position + max(h, w), total + h * w
        tail = length - bounds[-2]
        if tail > 0:
            parts.append(text[:, bounds[-2] :])
            ids.append(_text_ids(position, tail, device))
            limits.append(torch.arange(total + 1, total + tail + 1, device=device))
            position, total = position + tail, total + tail
        ids.append(_image_ids(target_h, target_w, target_h, target_w, position, device))
        limits.append(torch.full((target_h * target_w,), total + target_h * target_w, device=device))
        rope = rope_angles(torch.cat(ids), self.config.axes_dims_rope, ROPE_THETA)
        batch = max(p.shape[0] for p in parts)
        prefix = torch.cat([p.expand(batch, -1, -1) for p in parts], dim=1)
        return Sequence(prefix, rope, torch.cat(limits), float(position))

    def target_rope(self, h: int, w: int, frame: float, device: torch.device) -> torch.Tensor:
        return rope_angles(_image_ids(h, w, h, w, frame, device), self.config.axes_dims_rope, ROPE_THETA)


def _text_ids(position: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(position, position + n, device=device, dtype=torch.float64)[:, None].expand(n, 3)


def _image_ids(
    h: int, w: int, target_h: int, target_w: int, frame: float, device: torch.device
) -> torch.Tensor:
    """[h*w, 3] rope ids, centred. Where a reference side's parity differs from the target's, ComfyUI's
    port shifts it half a token so it centres on the target; diffusers keeps whole positions. The
    two agree whenever every side is even, which the 32 px grid of both pipelines ensures (checked
    against diffusers' implementation to 1e-5)."""
    rows = torch.arange(h, device=device, dtype=torch.float64) - (h - h // 2) + 0.5 * (h % 2 - target_h % 2)
    cols = torch.arange(w, device=device, dtype=torch.float64) - (w - w // 2) + 0.5 * (w % 2 - target_w % 2)
    grid = torch.stack(
        [
            torch.full((h, w), float(frame), device=device, dtype=torch.float64),
            rows[:, None].expand(h, w),
            cols[None, :].expand(h, w),
        ],
        dim=-1,
    )
    return grid.flatten(0, 1)


def rope_angles(ids: torch.Tensor, axes: tuple[int, ...], theta: float) -> torch.Tensor:
    """[N, 3] positions -> [N, head_dim / 2] unit complex rotations, axis after axis (each axis of
    ``d`` channels rotating ``d / 2`` interleaved pairs at frequencies theta^(-2j/d))."""
    angles = []
    for axis, dim in enumerate(axes):
        omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
        angles.append(ids[:, axis : axis + 1].double() * omega[None])
    angle = torch.cat(angles, dim=-1)
    return torch.polar(torch.ones_like(angle), angle).to(torch.complex64)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotates interleaved channel pairs of ``x`` [B, N, heads, head_dim] by ``rope`` [N, head_dim/2]."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rope[None, :, None, :]).flatten(3).to(x.dtype)


def _mask(limits: torch.Tensor, keys: int) -> torch.Tensor:
    """[N, keys] bool: row i may attend to keys below limits[i]."""
    return torch.arange(keys, device=limits.device)[None, :] < limits[:, None]
