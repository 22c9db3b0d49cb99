"""The model call inside a Qwen-Image 2.1 sampling step: x_t and sigma -> the guided x0 estimate.

2.1 takes its latent unpatched (one token per latent pixel, 64 channels) and each conditioning
brings its own prompt, reference latents and the slots where the references sit in the prompt
(TextEncodeQwenImage21 gives the negative the same references). Each conditioning keeps its own
prefix cache for the run (``models.arch.prefix_cache``), so the prompt and references are computed
once, not at every step. The schedule's default is ComfyUI's for the model: a flux time shift with
mu 0.69 (the mu of a 1024x1024 image), which is the AuraFlow shift exp(0.69).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.arch.prefix_cache import CacheOptions, PrefixCache, make_cache
from genserve.services.base import RunContext
from genserve.services.pipeline import samplers
from genserve.services.pipeline.text_encoder import Encoding

DEFAULT_SHIFT = math.exp(0.69)
SLOTS_KEY = "image_slots"  # Encoding.metadata: where each reference goes in the prompt


def pack(latent: torch.Tensor) -> torch.Tensor:
    """``[B, C, 1, H, W]`` -> ``[B, C, H, W]``: the model's own layout (no patches)."""
    return latent[:, :, 0]


def unpack(x: torch.Tensor, height: int, width: int, frames: int = 1) -> torch.Tensor:
    return x.unsqueeze(2)


@dataclass
class _Condition:
    context: torch.Tensor  # [1, T, D]
    references: list[torch.Tensor]  # each [1, C, h, w]
    slots: list[int]
    cache: PrefixCache | None


class Qwen21Denoiser:
    """x_t ``[B, C, H, W]``, sigma -> the guided x0 estimate under each conditioning."""

    def __init__(
        self,
        model: Any,
        conditions: list[Encoding],
        settings: dict[str, Any],
        ctx: RunContext,
        cache: CacheOptions,
    ) -> None:
        self.transformer, self.device, self.dtype, self.ctx = (
            model.transformer,
            model.device,
            model.dtype,
            ctx,
        )
        self.cfg = settings["cfg"]
        self.cfg_norm_strength = settings.get("cfg_norm_strength")
        width = self.transformer.config.context_in_dim
        self.conditions = []
        for index, cond in enumerate(conditions):
            if cond.prompt_embeds.shape[-1] != width:
                field = "positive" if index == 0 else "negative"
                raise GenserveError(
                    ErrorCode.INVALID_INPUT,
                    f"{field}: a {cond.prompt_embeds.shape[-1]}-wide prompt encoding, but this Qwen-Image 2.1"
                    f" model reads {width}-wide ones: encode with its Qwen3-VL text encoder "
                    "(TextEncodeQwenImage21)",
                    field=field,
                )
            kept = cond.prompt_mask[0].bool()
            context = cond.prompt_embeds[:, kept.to(cond.prompt_embeds.device)]
            self.conditions.append(
                _Condition(
                    context=context.to(device=self.device, dtype=self.dtype),
                    references=[
                        r[:, :, 0].to(device=self.device, dtype=self.dtype) for r in cond.reference_latents
                    ],
                    slots=[int(s) for s in cond.metadata.get(SLOTS_KEY, [])],
                    cache=make_cache(cache, self.device),
                )
            )

    def velocity(self, x_t: torch.Tensor, sigma: float, condition: _Condition) -> torch.Tensor:
        timestep = torch.full((x_t.shape[0],), sigma, device=self.device, dtype=self.dtype)
        return self.transformer(
            x_t, timestep, condition.context, condition.references, condition.slots, condition.cache
        )

    def __call__(self, x_t: torch.Tensor, sigma: float) -> torch.Tensor:
        self.ctx.check_cancelled()
        estimates = [x_t - sigma * self.velocity(x_t, sigma, c) for c in self.conditions]
        cond, uncond = estimates[0], estimates[1] if len(estimates) > 1 else None
        guided = samplers.cfg_combine(cond, uncond, self.cfg)
        if self.cfg_norm_strength is None:
            return guided
        # CFGNorm, per latent pixel over the channels.
        b, c, h, w = guided.shape
        shape = (b, c, h * w)
        normed = samplers.cfg_norm(guided.reshape(shape), cond.reshape(shape), self.cfg_norm_strength, 1)
        return normed.view_as(guided)
