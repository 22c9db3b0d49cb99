"""The model call inside a sampling step: x_t and sigma -> the guided x0 estimate.

One transformer call per conditioning (classifier-free guidance), CFGNorm, the reference latents
of an edit model, a layered latent's layers, and the ControlNets active at that sigma.
"""

from __future__ import annotations

from typing import Any

import torch

from genserve.services.base import RunContext
from genserve.services.pipeline import samplers
from genserve.services.pipeline.control import Controls, padded
from genserve.services.pipeline.imaging import pack, to_patch_grid
from genserve.services.pipeline.text_encoder import Encoding


class Denoiser:
    """x_t, sigma -> the guided x0 estimate: the transformer under each condition, CFG, then CFGNorm."""

    def __init__(
        self,
        model: Any,
        conditions: list[Encoding],
        references: list[torch.Tensor],
        shape: torch.Size,
        settings: dict[str, Any],
        ctx: RunContext,
        controls: Controls | None = None,
    ) -> None:
        device, dtype = model.device, model.dtype
        self.controls = controls if controls else None
        self.blocks = len(getattr(model.transformer, "transformer_blocks", ()))
        self.batch, self.channels, frames, height, width = shape
        self.transformer, self.device, self.dtype = model.transformer, device, dtype
        self.cfg, self.cfg_norm_strength, self.ctx = settings["cfg"], settings["cfg_norm_strength"], ctx
        references = [to_patch_grid(r) for r in references]  # an odd side padded, as the latent's
        self.references = [
            pack(r.to(device=device, dtype=dtype)).expand(self.batch, -1, -1) for r in references
        ]
        own = [(1, height // 2, width // 2)] * frames  # a layered latent: one entry per layer
        self.img_shapes = [
            [*own, *[(1, r.shape[-2] // 2, r.shape[-1] // 2) for r in references]]
        ] * self.batch
        # Qwen-Image-Layered's timestep embedding adds "RGB or layers" (0: the layered output).
        layered = getattr(model.transformer.config, "use_additional_t_cond", False)
        self.extra = (
            {"additional_t_cond": torch.zeros(self.batch, dtype=torch.long, device=device)} if layered else {}
        )
        self.prepared = []
        for cond in conditions:
            mask = cond.prompt_mask.to(device)
            embeds = cond.prompt_embeds.to(device=device, dtype=dtype).expand(self.batch, -1, -1)
            self.prepared.append((embeds, None if bool(mask.all()) else mask.expand(self.batch, -1)))

    def velocity(
        self, x_t: torch.Tensor, sigma: float, embeds: torch.Tensor, mask: torch.Tensor | None, condition: int
    ) -> torch.Tensor:
        hidden = torch.cat([x_t, *self.references], dim=1) if self.references else x_t
        timestep = torch.full((self.batch,), sigma * 1000.0, device=self.device, dtype=self.dtype) / 1000
        extra: dict[str, Any] = dict(self.extra)
        if self.controls is not None:
            own_shapes = [shapes[:1] for shapes in self.img_shapes]
            samples = self.controls.block_samples(
                condition, sigma, x_t, embeds, mask, timestep, own_shapes, self.blocks
            )
            if samples is not None:
                extra["controlnet_block_samples"] = padded(samples, hidden.shape[1])
        out = self.transformer(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=embeds,
            encoder_hidden_states_mask=mask,
            img_shapes=self.img_shapes,
            return_dict=False,
            **extra,
        )[0]
        return out[:, : x_t.shape[1]]

    def __call__(self, x_t: torch.Tensor, sigma: float) -> torch.Tensor:
        self.ctx.check_cancelled()
        cond = x_t - sigma * self.velocity(x_t, sigma, *self.prepared[0], 0)
        uncond = (
            x_t - sigma * self.velocity(x_t, sigma, *self.prepared[1], 1) if len(self.prepared) > 1 else None
        )
        guided_x0 = samplers.cfg_combine(cond, uncond, self.cfg)
        # Packed features are channel-major: CFGNorm normalises per pixel over the channels.
        shape = (self.batch, x_t.shape[1], self.channels, 4)
        normed = samplers.cfg_norm(guided_x0.view(shape), cond.view(shape), self.cfg_norm_strength, 2)
        return normed.view_as(guided_x0)
