"""ComfyUI's custom-sampling node types: SamplerCustomAdvanced and the NOISE, GUIDER, SAMPLER and
SIGMAS values that feed it (RandomNoise, DisableNoise, CFGGuider, BasicGuider, KSamplerSelect,
BasicScheduler, ManualSigmas, SetFirstSigma).

The pieces are plain values (a seed, a guidance setting, a sampler name, a sigma tensor) and the
sampling itself is the service's ``sample_with_models``, the loop KSampler runs, with the sigmas
given instead of computed. So RandomNoise(seed) + CFGGuider(cfg) + KSamplerSelect(name) +
BasicScheduler(scheduler, steps, denoise) gives KSampler's latent bit for bit, as in ComfyUI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.services.pipeline import qwen21_denoiser, samplers
from genserve.services.pipeline.custom_sampling import CustomSampling
from genserve.services.pipeline.sampling import MAX_SEED, sample_with_models
from genserve.services.pipeline.text_encoder import Encoding
from genserve.workflows.inputs import Combo, Float, Int, Linked, String
from genserve.workflows.nodes.base import NodeContext, NodeType
from genserve.workflows.nodes.values import QWEN21, ModelRef, latent_samples, resources_of

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
MAX_SIGMAS = 10_001  # BasicScheduler's 10000 steps, plus the final 0


@dataclass(frozen=True)
class Noise:
    """NOISE: the seed of the starting noise, or none at all (DisableNoise keeps the latent as is)."""

    seed: int = 0
    enabled: bool = True


@dataclass(frozen=True)
class Guider:
    """GUIDER: the model and conditionings to guide with; ``negative`` None is BasicGuider (cfg 1)."""

    model: ModelRef
    positive: Encoding
    negative: Encoding | None = None
    cfg: float = 1.0


@dataclass(frozen=True)
class SamplerRef:
    """SAMPLER: one of the sampler loops genserve implements, by ComfyUI's name."""

    name: str


def model_settings(model: ModelRef, ctx: NodeContext) -> dict[str, Any]:
    """The sampling settings a MODEL value carries, the pipeline defaults where it sets none."""
    d = resources_of(ctx).defaults
    if model.family == QWEN21:
        # ComfyUI's own for the model: a flux shift of mu 0.69, and no CFGNorm unless a node sets it.
        shift, cfg_norm = qwen21_denoiser.DEFAULT_SHIFT, model.cfg_norm_strength
    else:
        shift, cfg_norm = (
            d.shift,
            d.cfg_norm_strength if model.cfg_norm_strength is None else model.cfg_norm_strength,
        )
    settings = {
        "shift": shift if model.shift is None else model.shift,
        "cfg_norm_strength": cfg_norm,
        "unet_model_name": model.unet_name,
        "loras": list(model.loras),
    }
    if model.prefix_cache is not None:
        settings["prefix_cache"] = {"device": model.prefix_cache[0], "dtype": model.prefix_cache[1]}
    return settings


def _random_noise(ctx: NodeContext, noise_seed: int) -> tuple[Noise]:
    return (Noise(noise_seed),)


def _disable_noise(ctx: NodeContext) -> tuple[Noise]:
    return (Noise(enabled=False),)


def _cfg_guider(
    ctx: NodeContext, model: ModelRef, positive: Encoding, negative: Encoding, cfg: float
) -> tuple[Guider]:
    return (Guider(model, positive, negative, float(cfg)),)


def _basic_guider(ctx: NodeContext, model: ModelRef, conditioning: Encoding) -> tuple[Guider]:
    return (Guider(model, conditioning),)


def _sampler_select(ctx: NodeContext, sampler_name: str) -> tuple[SamplerRef]:
    return (SamplerRef(sampler_name),)


def _basic_scheduler(
    ctx: NodeContext, model: ModelRef, scheduler: str, steps: int, denoise: float
) -> tuple[torch.Tensor]:
    if denoise <= 0:  # ComfyUI: no sigmas, so the sampler hands the latent back
        return (torch.zeros(0),)
    shift = model_settings(model, ctx)["shift"]
    return (samplers.sigma_schedule(scheduler, steps, shift, denoise),)


def _manual_sigmas(ctx: NodeContext, sigmas: str) -> tuple[torch.Tensor]:
    """Every number in the text, in order, whatever separates them (as ComfyUI reads it)."""
    values = [float(found) for found in NUMBER.findall(sigmas)]
    if len(values) > MAX_SIGMAS:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"sigmas: at most {MAX_SIGMAS} values, got {len(values)}", field="sigmas"
        )
    return (torch.tensor(values, dtype=torch.float32),)


def _set_first_sigma(ctx: NodeContext, sigmas: torch.Tensor, sigma: float) -> tuple[torch.Tensor]:
    if sigmas.numel() == 0:
        raise GenserveError(ErrorCode.INVALID_INPUT, "sigmas: the schedule is empty", field="sigmas")
    changed = sigmas.clone()
    changed[0] = sigma
    return (changed,)


def _check_sigmas(sigmas: torch.Tensor) -> None:
    if sigmas.dim() != 1 or not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise GenserveError(
            ErrorCode.INVALID_INPUT, "sigmas: expected finite, non-negative noise levels", field="sigmas"
        )
    if bool((sigmas[:-1] == 0).any()):
        # A zero before the end would divide by zero in every sampler's step.
        raise GenserveError(
            ErrorCode.INVALID_INPUT, "sigmas: only the last noise level may be 0", field="sigmas"
        )


def _sampler_custom_advanced(
    ctx: NodeContext,
    noise: Noise,
    guider: Guider,
    sampler: SamplerRef,
    sigmas: torch.Tensor,
    latent_image: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    latent = latent_samples(latent_image)
    if sigmas.numel() <= 1:  # nothing to step through: ComfyUI returns the latent unchanged
        return (dict(latent_image), dict(latent_image))
    _check_sigmas(sigmas)
    settings = {
        "seed": noise.seed,
        "steps": sigmas.numel() - 1,
        "cfg": guider.cfg,
        "sampler_name": sampler.name,
        "scheduler": "simple",  # unused: the sigmas are given
        "denoise": 1.0,
        **model_settings(guider.model, ctx),
    }
    custom = CustomSampling(
        sigmas=sigmas.float(), add_noise=noise.enabled, noise_mask=latent_image.get("noise_mask")
    )
    negative = guider.negative if guider.cfg != 1.0 else None
    rctx = resources_of(ctx).run_context(ctx)
    sampled, _ = sample_with_models(
        guider.positive, negative, latent, settings, rctx, custom, guider.model.patches
    )
    denoised = custom.last_denoised if custom.last_denoised is not None else sampled
    return ({**latent_image, "samples": sampled}, {**latent_image, "samples": denoised})


def custom_sampling_node_types() -> list[NodeType]:
    return [
        NodeType(
            "RandomNoise",
            _random_noise,
            required={"noise_seed": Int(0, min=0, max=MAX_SEED)},
            return_types=("NOISE",),
            category="sampling/custom_sampling/noise",
        ),
        NodeType(
            "DisableNoise",
            _disable_noise,
            return_types=("NOISE",),
            category="sampling/custom_sampling/noise",
        ),
        NodeType(
            "CFGGuider",
            _cfg_guider,
            required={
                "model": Linked("MODEL"),
                "positive": Linked("CONDITIONING"),
                "negative": Linked("CONDITIONING"),
                "cfg": Float(8.0, min=0.0, max=100.0, step=0.1),
            },
            return_types=("GUIDER",),
            category="sampling/custom_sampling/guiders",
        ),
        NodeType(
            "BasicGuider",
            _basic_guider,
            required={"model": Linked("MODEL"), "conditioning": Linked("CONDITIONING")},
            return_types=("GUIDER",),
            category="sampling/custom_sampling/guiders",
        ),
        NodeType(
            "KSamplerSelect",
            _sampler_select,
            required={"sampler_name": Combo(tuple(samplers.SAMPLERS), default="euler")},
            return_types=("SAMPLER",),
            category="sampling/custom_sampling/samplers",
        ),
        NodeType(
            "BasicScheduler",
            _basic_scheduler,
            required={
                "model": Linked("MODEL"),
                "scheduler": Combo(tuple(samplers.SCHEDULERS), default="simple"),
                "steps": Int(20, min=1, max=10000),
                "denoise": Float(1.0, min=0.0, max=1.0, step=0.01),
            },
            return_types=("SIGMAS",),
            category="sampling/custom_sampling/schedulers",
        ),
        NodeType(
            "ManualSigmas",
            _manual_sigmas,
            required={"sigmas": String("1, 0.5")},
            return_types=("SIGMAS",),
            category="_for_testing/custom_sampling",
        ),
        NodeType(
            "SetFirstSigma",
            _set_first_sigma,
            required={
                "sigmas": Linked("SIGMAS"),
                "sigma": Float(136.0, min=0.0, max=20000.0, step=0.001),
            },
            return_types=("SIGMAS",),
            category="sampling/custom_sampling/sigmas",
        ),
        NodeType(
            "SamplerCustomAdvanced",
            _sampler_custom_advanced,
            required={
                "noise": Linked("NOISE"),
                "guider": Linked("GUIDER"),
                "sampler": Linked("SAMPLER"),
                "sigmas": Linked("SIGMAS"),
                "latent_image": Linked("LATENT"),
            },
            return_types=("LATENT", "LATENT"),
            return_names=("output", "denoised_output"),
            category="sampling/custom_sampling",
        ),
    ]
