"""ControlNets during sampling: ComfyUI's ControlNetApplyAdvanced (InstantX) and
QwenImageDiffsynthControlnet (DiffSynth block-wise) on genserve's Qwen-Image sampler.

What the nodes attach is plain data (an image, a strength, a model name); the work happens here,
when the latent's size is known, as in ComfyUI:

- the control image is cropped from the centre to the latent's aspect and scaled to its pixel
  size (``nearest-exact`` for a ControlNet, ``area`` for a block-wise patch), VAE-encoded and
  normalised; an inpainting ControlNet gets the kept-area mask as one more latent channel;
- an InstantX ControlNet runs beside the transformer at every step whose sigma lies in its
  ``start_percent``..``end_percent`` window, under the same conditioning, and its block outputs
  (times ``strength``) are added to the transformer's blocks; several ControlNets add up;
- a block-wise patch adds, after every transformer block, its block's output over the image
  tokens and the encoded control (times ``strength``), at every step.

Both are summed into the image tokens only: reference latents of an edit model are left alone.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind
from genserve.services.base import RunContext
from genserve.services.pipeline.imaging import center_crop, pack, vae_encode

VAE_SCALE = 8


@dataclass(frozen=True, eq=False)
class ControlHint:
    """One ControlNet on one conditioning. ``image`` is ComfyUI's IMAGE ``[B, H, W, 3]`` in 0..1;
    ``mask`` (the inpainting ControlNet's) is ``[B, 1, H, W]``, 1 where the image is kept."""

    controlnet: str
    image: torch.Tensor
    vae: str
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    mask: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class BlockPatch:
    """A DiffSynth block-wise ControlNet on the model; ``mask`` as in ``ControlHint``."""

    patch: str
    image: torch.Tensor
    vae: str
    strength: float = 1.0
    mask: torch.Tensor | None = None


def fit(images: torch.Tensor, width: int, height: int, mode: str) -> torch.Tensor:
    """``[B, C, H, W]`` cropped from the centre to ``width:height`` and scaled to that size
    (ComfyUI's ``common_upscale`` with ``crop="center"``)."""
    images = center_crop(images, width, height)
    if images.shape[-2:] == (height, width):
        return images
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return torch.nn.functional.interpolate(images.float(), size=(height, width), mode=mode, **kwargs)


def _encode_pixels(pixels: torch.Tensor, vae: Any, ctx: RunContext) -> torch.Tensor:
    """``[B, 3, H, W]`` in 0..1 -> normalised latent ``[B, 16, 1, H/8, W/8]``, through 8-bit
    pixels as every image genserve encodes."""
    latents = []
    for item in pixels:
        ctx.check_cancelled()
        array = (item.permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
        latents.append(vae_encode(vae, Image.fromarray(np.ascontiguousarray(array), "RGB")))
    return torch.cat(latents)


def _with_mask(latent: torch.Tensor, mask: torch.Tensor | None, mode: str, crop: bool) -> torch.Tensor:
    """The latent with the kept-area mask (ones where none is given) as one more channel."""
    batch, _, _, height, width = latent.shape
    if mask is None:
        extra = torch.ones(batch, 1, height, width)
    else:
        mask = mask.float().mean(dim=1, keepdim=True)
        if crop:
            extra = fit(mask, width, height, mode)
        else:
            extra = torch.nn.functional.interpolate(mask, size=(height, width), mode=mode)
        extra = extra.repeat(-(-batch // extra.shape[0]), 1, 1, 1)[:batch]
    return torch.cat([latent, extra.unsqueeze(2)], dim=1)


def encode_control(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    with_mask: bool,
    vae_name: str,
    size: tuple[int, int],
    mode: str,
    ctx: RunContext,
) -> torch.Tensor:
    """The control image as the latent a control model takes at latent size ``size`` (h, w):
    packed ``[B, h*w/4, 64 (+4 with the mask)]``."""
    height, width = size
    pixels = fit(image[..., :3].movedim(-1, 1).float(), width * VAE_SCALE, height * VAE_SCALE, mode)
    with ctx.use_model(ModelKind.VAE, vae_name, "vae") as vae:
        try:
            latent = _encode_pixels(pixels, vae, ctx)
        except GenserveError:
            raise
        except Exception as exc:
            raise GenserveError(ErrorCode.ENCODING_FAILED, f"control image encoding failed: {exc}") from exc
    if with_mask:
        # ControlNets scale the mask as the image (nearest, centre crop); block-wise patches bilinear.
        latent = _with_mask(latent, mask, "nearest-exact" if mode != "area" else "bilinear", mode != "area")
    return pack(latent)


def percent_to_sigma(percent: float, shift: float) -> float:
    """ComfyUI's flow-model ``percent_to_sigma``: the sigma a fraction of the way through sampling."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    t = 1.0 - percent
    return shift * t / (1 + (shift - 1) * t)


@dataclass
class _ActiveControl:
    model: Any  # a loaded ControlNet (genserve.models.loaders.control.ControlNet)
    cond: torch.Tensor  # packed control latent on the model's device
    hint: ControlHint
    sigma_from: float
    sigma_to: float


class Controls:
    """The control models of one sampling run, loaded and their images encoded; what the denoiser
    asks at each step. ``prepare`` borrows the models for the run and encodes the images."""

    def __init__(self, conditions: Sequence[Sequence[ControlHint]], patches: Sequence[BlockPatch]) -> None:
        self.conditions = [tuple(c) for c in conditions]
        self.patches = tuple(patches)
        self._active: list[list[_ActiveControl]] = [[] for _ in self.conditions]
        self._patches: list[tuple[Any, torch.Tensor, float]] = []
        self.base: torch.nn.Module | None = None  # the transformer, once prepared

    def __bool__(self) -> bool:
        return any(self.conditions) or bool(self.patches)

    def prepare(
        self,
        stack_models: Callable[[ModelKind, str, str], Any],
        base: torch.nn.Module,
        size: tuple[int, int],
        shift: float,
        device: torch.device,
        dtype: torch.dtype,
        ctx: RunContext,
    ) -> None:
        """Encode every control image at the latent ``size`` and borrow the control models
        (``stack_models(kind, name, field)`` pins one for the run); ``base`` is the transformer
        (a Fun ControlNet borrows its input layers)."""
        self.base = base

        def cond(
            image: torch.Tensor, mask: torch.Tensor | None, with_mask: bool, vae: str, mode: str
        ) -> torch.Tensor:
            # Positive and negative share their hint: the VAE's encoding cache serves the second.
            return encode_control(image, mask, with_mask, vae, size, mode, ctx).to(device=device, dtype=dtype)

        for index, hints in enumerate(self.conditions):
            for hint in hints:
                model = stack_models(ModelKind.CONTROLNET, hint.controlnet, "control_net")
                latent = cond(hint.image, hint.mask, model.takes_mask, hint.vae, "nearest-exact")
                _check_width(model.in_features, latent, hint.controlnet, "control_net")
                upper = percent_to_sigma(hint.start_percent, shift)
                lower = percent_to_sigma(hint.end_percent, shift)
                self._active[index].append(_ActiveControl(model, latent, hint, upper, lower))
        for patch in self.patches:
            model = stack_models(ModelKind.MODEL_PATCH, patch.patch, "model_patch")
            latent = cond(patch.image, patch.mask, model.additional_in_dim > 0, patch.vae, "area")
            _check_width(model.in_features, latent, patch.patch, "model_patch")
            with torch.no_grad():
                embedded = model.embed(latent)
            self._patches.append((model, embedded, patch.strength))

    def block_samples(
        self,
        condition: int,
        sigma: float,
        hidden: torch.Tensor,
        embeds: torch.Tensor,
        mask: torch.Tensor | None,
        timestep: torch.Tensor,
        img_shapes: list[Any],
        blocks: int,
    ) -> list[torch.Tensor] | None:
        """Per transformer block, the sum of the ControlNet outputs active at ``sigma`` for
        condition ``condition`` (None when none is)."""
        total: list[torch.Tensor] | None = None
        for active in self._active[condition]:
            if not active.sigma_to <= sigma <= active.sigma_from:
                continue
            cond = _to_batch(active.cond, hidden.shape[0])
            if active.model.fun:
                hints = active.model.module.hints(self.base, hidden, cond, embeds, timestep, img_shapes)
                per_block = _injected([h * active.hint.strength for h in hints], blocks)
            else:
                samples = active.model.module(
                    hidden_states=hidden,
                    controlnet_cond=cond,
                    conditioning_scale=active.hint.strength,
                    encoder_hidden_states=embeds,
                    encoder_hidden_states_mask=mask,
                    timestep=timestep,
                    img_shapes=img_shapes,
                    return_dict=False,
                )
                per_block = _per_block(list(samples), blocks)
            total = per_block if total is None else [a + b for a, b in zip(total, per_block, strict=True)]
        return total

    @contextmanager
    def patching(self, transformer: torch.nn.Module) -> Iterator[None]:
        """The block-wise patches on ``transformer``'s blocks for this thread's calls."""
        if not self._patches:
            yield
            return
        install_block_hooks(transformer)

        def patch(index: int, hidden: torch.Tensor) -> torch.Tensor:
            for model, embedded, strength in self._patches:
                if index < len(model.blocks):
                    tokens = embedded.shape[1]
                    cond = _to_batch(embedded, hidden.shape[0])
                    image = hidden[:, :tokens]
                    added = model.blocks[index](image, cond.to(hidden.dtype)) * strength
                    hidden = torch.cat([image + added, hidden[:, tokens:]], dim=1)
            return hidden

        previous = getattr(_HOOKS, "patch", None)
        _HOOKS.patch = patch
        try:
            yield
        finally:
            _HOOKS.patch = previous


def _to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """A control batch repeated (or cut) to the sampled batch, as ComfyUI broadcasts its hint."""
    if tensor.shape[0] == batch:
        return tensor
    return tensor.repeat(-(-batch // tensor.shape[0]), *([1] * (tensor.dim() - 1)))[:batch]


def _check_width(takes: int, latent: torch.Tensor, name: str, field: str) -> None:
    if latent.shape[-1] != takes:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: {name} takes {takes} control features per token, the control image gives "
            f"{latent.shape[-1]} (a ControlNet for another model family?)",
            field=field,
        )


def _per_block(samples: list[torch.Tensor], blocks: int) -> list[torch.Tensor]:
    """A ControlNet's outputs spread over the base model's blocks as diffusers' transformer does
    (each output serves ``ceil(blocks / outputs)`` consecutive blocks)."""
    interval = max(1, math.ceil(blocks / len(samples)))
    return [samples[min(i // interval, len(samples) - 1)] for i in range(blocks)]


def _injected(hints: list[torch.Tensor], blocks: int) -> list[torch.Tensor]:
    """A Fun ControlNet's hints at every ``blocks // len(hints)``-th base block, zeros elsewhere
    (VideoX-Fun's blocks 0, 12, 24, 36, 48 of Qwen-Image's 60)."""
    stride = max(1, blocks // len(hints))
    zeros = torch.zeros_like(hints[0])
    per_block = [zeros] * blocks
    for index, hint in enumerate(hints):
        if index * stride < blocks:
            per_block[index * stride] = hint
    return per_block


def padded(samples: list[torch.Tensor], tokens: int) -> list[torch.Tensor]:
    """Block samples zero-padded over the reference latents' tokens that follow the image's."""
    extra = tokens - samples[0].shape[1]
    if extra <= 0:
        return samples
    return [torch.nn.functional.pad(s, (0, 0, 0, extra)) for s in samples]


_HOOKS = threading.local()  # .patch: this thread's block-wise patch, or None


def _after_block(index: int) -> Callable[..., Any]:
    def hook(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        patch = getattr(_HOOKS, "patch", None)
        if patch is None:
            return output
        text, image = output
        return text, patch(index, image)

    return hook


def install_block_hooks(transformer: torch.nn.Module) -> None:
    """Once per transformer: a forward hook after each block that applies the calling thread's
    block-wise patch. Runs share the model; each run's patch lives in its own thread's state, so
    one run's patch never reaches another's blocks."""
    if getattr(transformer, "_genserve_block_hooks", False):
        return
    with _INSTALL:
        if getattr(transformer, "_genserve_block_hooks", False):
            return
        for index, block in enumerate(transformer.transformer_blocks):
            block.register_forward_hook(_after_block(index), with_kwargs=True)
        transformer._genserve_block_hooks = True


_INSTALL = threading.Lock()


def enter_models(stack: ExitStack, ctx: RunContext) -> Callable[[ModelKind, str, str], Any]:
    """A ``stack_models`` for ``Controls.prepare``: each model pinned until ``stack`` closes."""

    def use(kind: ModelKind, name: str, field: str) -> Any:
        return stack.enter_context(ctx.use_model(kind, name, field))

    return use
