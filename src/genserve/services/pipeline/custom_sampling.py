"""What ComfyUI's SamplerCustomAdvanced and SetLatentNoiseMask add to a KSampler run: given
sigmas, no starting noise, an inpainting mask, and the last step's x0 estimate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from genserve.services.pipeline import samplers
from genserve.services.pipeline.imaging import pack


@dataclass
class CustomSampling:
    """What ComfyUI's SamplerCustomAdvanced and SetLatentNoiseMask add to KSampler's settings.

    ``sigmas`` replaces the scheduler's schedule; ``add_noise`` False starts from the latent itself
    (DisableNoise); ``noise_mask`` (``[B or 1, 1, H, W]`` at any resolution, 1 = repaint) keeps the
    rest of the latent as it was, as ComfyUI's inpainting sampler does: outside the mask the model
    sees the input latent noised to the current sigma, and its estimate is replaced by the input.
    After sampling ``last_denoised`` holds the last step's x0 estimate (ComfyUI's denoised_output).
    """

    sigmas: torch.Tensor | None = None
    add_noise: bool = True
    noise_mask: torch.Tensor | None = None
    last_denoised: torch.Tensor | None = field(default=None, init=False)

    def wrap(
        self,
        denoiser: samplers.Denoiser,
        noise: torch.Tensor,
        latent: torch.Tensor,
        like: torch.Tensor,
        pack: Callable[[torch.Tensor], torch.Tensor] = pack,
    ) -> samplers.Denoiser:
        """``pack`` lays a latent out as the model's x (Qwen-Image's 2x2 patches by default)."""
        keep = None
        if self.noise_mask is not None:
            batch, channels, frames, height, width = latent.shape
            mask = self.noise_mask.float().reshape(-1, 1, *self.noise_mask.shape[-2:])
            mask = torch.nn.functional.interpolate(mask, size=(height, width), mode="bilinear")
            mask = mask.repeat(-(-batch // mask.shape[0]), 1, 1, 1)[:batch]
            packed = pack(mask.unsqueeze(2).expand(batch, channels, frames, height, width).contiguous())
            keep = (packed.to(like), pack(latent.float()).to(like), pack(noise.float()).to(like))

        def denoise(x_t: torch.Tensor, sigma: float) -> torch.Tensor:
            if keep is not None:
                mask, source, drawn = keep
                x_t = x_t * mask + (drawn * sigma + source * (1 - sigma)) * (1 - mask)
            out = denoiser(x_t, sigma)
            if keep is not None:
                out = out * mask + source * (1 - mask)
            self.last_denoised = out
            return out

        return denoise
