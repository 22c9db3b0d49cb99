"""sampling: encodings + latent -> sampled latent file.

ComfyUI's UNETLoader -> LoraLoaderModelOnly -> ModelSamplingAuraFlow(shift) -> CFGNorm(strength)
-> KSampler(seed, steps, cfg, sampler, scheduler, denoise). Every parameter takes effect:
cfg != 1 runs true classifier-free guidance with the negative encoding (cfg == 1 skips it, as
ComfyUI does); denoise < 1 starts from the input latent at a lower noise level; the same seed
gives the same latent; the shift is the AuraFlow shift.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from typing import Any, Literal

import torch
from pydantic import Field

from genserve.errors import ErrorCode, GenserveError
from genserve.models.arch.prefix_cache import CacheOptions
from genserve.models.loaders.transformer import is_qwen21
from genserve.models.registry import ModelKind
from genserve.services.base import RunContext, Service, ServiceModel
from genserve.services.pipeline import qwen21_denoiser, samplers
from genserve.services.pipeline.control import BlockPatch, Controls, enter_models
from genserve.services.pipeline.custom_sampling import CustomSampling
from genserve.services.pipeline.denoiser import Denoiser
from genserve.services.pipeline.imaging import pack, to_patch_grid, unpack
from genserve.services.pipeline.latent_encoder import LATENT_FORMAT
from genserve.services.pipeline.qwen21_denoiser import Qwen21Denoiser
from genserve.services.pipeline.text_encoder import ENCODING_FORMAT, Encoding
from genserve.storage.artifacts import load_tensors, save_tensors

MAX_SEED = 2**64 - 1


class SamplingParams(ServiceModel):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=1000)
    cfg: float | None = Field(None, ge=0, le=100)
    sampler_name: str | None = None
    scheduler: str | None = None
    denoise: float | None = Field(None, gt=0, le=1)


class ModelTransformParams(ServiceModel):
    shift: float | None = Field(None, gt=0, le=100, description="AuraFlow sigma shift.")
    strength: float | None = Field(None, ge=0, le=100, description="CFGNorm strength.")


class SampleRequest(ServiceModel):
    positive_encoding_file: str
    negative_encoding_file: str | None = Field(None, description="Required when cfg != 1.")
    latent_file: str
    unet_model_name: str | None = None
    lora_model_name: str | None = Field(None, description="LoRA under models/loras; '' for none.")
    lora_strength: float | None = Field(None, ge=-10, le=10)
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    model_transform_params: ModelTransformParams = Field(default_factory=ModelTransformParams)
    output_dir: str | None = None


class SampleResponse(ServiceModel):
    status: Literal["success"] = "success"
    request_id: str
    sampled_latent_file: str
    sampled_latent_shape: list[int]
    sampling_metadata: dict[str, Any]


def resolved_settings(request: SampleRequest, ctx: RunContext) -> dict[str, Any]:
    """Every sampling setting with the config's defaults filled in, checked."""
    d = ctx.defaults
    p, m = request.sampling_params, request.model_transform_params
    lora = d.lora_model_name if request.lora_model_name is None else request.lora_model_name
    settings = {
        "seed": p.seed,
        "steps": p.steps or d.steps,
        "cfg": d.cfg if p.cfg is None else p.cfg,
        "sampler_name": p.sampler_name or d.sampler_name,
        "scheduler": p.scheduler or d.scheduler,
        "denoise": p.denoise or d.denoise,
        "shift": m.shift or d.shift,
        "cfg_norm_strength": d.cfg_norm_strength if m.strength is None else m.strength,
        "unet_model_name": request.unet_model_name or d.unet_model_name,
        "lora_model_name": lora or None,
        "lora_strength": d.lora_strength if request.lora_strength is None else request.lora_strength,
    }
    if settings["sampler_name"] not in samplers.SAMPLERS:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"sampling_params.sampler_name: unknown sampler {settings['sampler_name']!r}; "
            f"accepted: {', '.join(samplers.SAMPLERS)}",
            field="sampling_params.sampler_name",
        )
    if settings["scheduler"] not in samplers.SCHEDULERS:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"sampling_params.scheduler: unknown scheduler {settings['scheduler']!r}; "
            f"accepted: {', '.join(samplers.SCHEDULERS)}",
            field="sampling_params.scheduler",
        )
    return settings


def _load_encoding(raw: str, field: str, ctx: RunContext) -> Encoding:
    path = ctx.sandbox.readable_file(raw, field, ErrorCode.NOT_FOUND)
    data = load_tensors(path, field)
    if data.get("format") != ENCODING_FORMAT or not isinstance(data.get("prompt_embeds"), torch.Tensor):
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"{field}: {path.name} is not an encoding file", field=field
        )
    meta = {
        k: v
        for k, v in data.items()
        if k not in {"prompt_embeds", "prompt_mask", "reference_latents", "format"}
    }
    return Encoding(
        data["prompt_embeds"], data["prompt_mask"], list(data.get("reference_latents") or []), meta
    )


def load_latent(raw: str, field: str, ctx: RunContext) -> tuple[torch.Tensor, dict[str, Any]]:
    path = ctx.sandbox.readable_file(raw, field, ErrorCode.NOT_FOUND)
    data = load_tensors(path, field)
    latent = data.get("latent", data.get("tensor"))
    if not isinstance(latent, torch.Tensor) or latent.dim() != 5 or latent.shape[2] != 1:
        shape = list(latent.shape) if isinstance(latent, torch.Tensor) else None
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"{field}: expected a [B, C, 1, H, W] latent, got {shape}", field=field
        )
    if latent.shape[-1] == 0 or latent.shape[-2] == 0 or latent.shape[-1] % 2 or latent.shape[-2] % 2:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: latent height and width must be even and non-zero",
            field=field,
        )
    if data.get("format") not in {None, LATENT_FORMAT}:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"{field}: {path.name} is not a latent file", field=field
        )
    return latent, {k: v for k, v in data.items() if k not in {"latent", "tensor"}}


def sample(
    model: Any,
    loras: Sequence[tuple[Any, float]] | None,
    positive: Encoding,
    negative: Encoding | None,
    latent: torch.Tensor,
    settings: dict[str, Any],
    ctx: RunContext,
    custom: CustomSampling | None = None,
    controls: Controls | None = None,
) -> torch.Tensor:
    """The denoising loop on a loaded ``DiffusionModel`` with ``loras`` (loaded LoRAs and their
    strengths, all applied at once) and ``controls`` (prepared ControlNets and patches); returns
    the normalised 5-D latent on CPU."""
    qwen21 = is_qwen21(model.transformer)
    if qwen21:
        latent = _qwen21_latent(model, latent, settings, controls)
        layout_pack, layout_unpack, to_grid = qwen21_denoiser.pack, qwen21_denoiser.unpack, _unchanged
    else:
        _check_channels(model, latent, settings)
        layout_pack, layout_unpack, to_grid = pack, unpack, to_patch_grid
    custom = custom or CustomSampling()
    batch, _, frames, height, width = latent.shape
    sigmas = custom.sigmas
    if sigmas is None:
        sigmas = samplers.sigma_schedule(
            settings["scheduler"], settings["steps"], settings["shift"], settings["denoise"]
        )
    # settings["seeds"] (optional): one seed per image, so each image of a batch is the image its
    # seed gives alone; without it one generator seeded with settings["seed"] draws the whole batch.
    seeds = settings.get("seeds") or [settings["seed"]]
    if batch % len(seeds):
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    noise = _seeded_noise(seeds, (batch // len(seeds), *latent.shape[1:]))
    noise = noise.view(latent.shape) if custom.add_noise else torch.zeros(latent.shape)
    # An odd latent side (a ComfyUI size such as 1128 px, 141 latent pixels) is padded to the 2x2
    # patch grid circularly, as ComfyUI's Qwen model pads, and cropped off again at the end.
    crop_to = (height, width)
    latent, noise = to_grid(latent.float()), to_grid(noise)
    height, width = latent.shape[-2:]
    x = layout_pack(noise) * sigmas[0] + layout_pack(latent.float()) * (1 - sigmas[0])
    x = x.to(device=model.device, dtype=model.dtype)
    guided = settings["cfg"] != 1.0
    conditions = [positive] + ([negative] if guided and negative is not None else [])
    denoiser: samplers.Denoiser
    if qwen21:
        options = CacheOptions(**settings.get("prefix_cache", {}))
        denoiser = Qwen21Denoiser(model, conditions, settings, ctx, options)
    else:
        denoiser = Denoiser(
            model, conditions, positive.reference_latents, latent.shape, settings, ctx, controls
        )
    denoiser = custom.wrap(denoiser, noise, latent, x, layout_pack)
    noise_gens = [torch.Generator(device="cpu").manual_seed(s + 1 if s < MAX_SEED else 0) for s in seeds]

    def step_noise(like: torch.Tensor) -> torch.Tensor:
        shape = (batch // len(seeds), *like.shape[1:])
        drawn = [torch.randn(shape, generator=g, dtype=torch.float32) for g in noise_gens]
        return torch.cat(drawn).to(like.device, like.dtype)

    def on_step(step: int, total: int) -> None:
        ctx.progress(step, total, stage="step", message=f"sampling step {step}/{total}")

    run = samplers.SAMPLERS[settings["sampler_name"]]
    patching = controls.patching(model.transformer) if controls else nullcontext()
    with torch.no_grad(), model.gate.stacked(loras or ()), patching:
        x = run(denoiser, x, sigmas, step_noise, on_step)
    rows, cols = crop_to
    if custom.last_denoised is not None:
        denoised = layout_unpack(custom.last_denoised.float().cpu(), height, width, frames)
        custom.last_denoised = denoised[..., :rows, :cols]
    return layout_unpack(x.float().cpu(), height, width, frames)[..., :rows, :cols]


def _unchanged(latent: torch.Tensor) -> torch.Tensor:
    return latent


def _qwen21_latent(
    model: Any, latent: torch.Tensor, settings: dict[str, Any], controls: Controls | None
) -> torch.Tensor:
    """The latent checked for Qwen-Image 2.1. An empty (all-zero) latent of the 8x VAE's layout (an
    EmptyLatentImage) becomes an empty one of 2.1's 64 channels at 1/16, as ComfyUI resizes an
    empty latent to the model's format; anything else must already be 2.1's."""
    name = settings.get("unet_model_name") or "the diffusion model"
    takes = model.transformer.config.in_channels
    if latent.shape[1] != takes and latent.shape[1] == 16 and not latent.any():
        batch, _, frames, height, width = latent.shape
        return torch.zeros(batch, takes, frames, max(1, round(height / 2)), max(1, round(width / 2)))
    if latent.shape[1] != takes:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"latent_file: {latent.shape[1]} latent channels, but {name} (Qwen-Image 2.1) takes {takes}: "
            "use the latent of TextEncodeQwenImage21 or of its VAE",
            field="latent_file",
        )
    if latent.shape[2] != 1:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"latent_file: a latent of {latent.shape[2]} layers, but {name} samples one image",
            field="latent_file",
        )
    if controls:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"control_net: genserve applies no ControlNets or model patches to Qwen-Image 2.1 ({name}) yet",
            field="control_net",
        )
    return latent


def _check_channels(model: Any, latent: torch.Tensor, settings: dict[str, Any]) -> None:
    takes = model.transformer.config.in_channels // 4  # 2x2 patches of the latent's channels
    channels = latent.shape[1]
    if channels != takes:
        name = settings.get("unet_model_name") or "the diffusion model"
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"latent_file: {channels} latent channels, but {name} takes {takes}",
            field="latent_file",
        )
    layered = getattr(model.transformer.config, "use_layer3d_rope", False)
    if latent.shape[2] != 1 and not layered:
        name = settings.get("unet_model_name") or "the diffusion model"
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"latent_file: a latent of {latent.shape[2]} layers, but {name} samples one image "
            "(layered latents are for Qwen-Image-Layered)",
            field="latent_file",
        )


def _seeded_noise(seeds: list[int], chunk_shape: tuple[int, ...]) -> torch.Tensor:
    """One chunk of the batch per seed, each drawn by its own CPU generator (device-independent)."""
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    return torch.cat([torch.randn(chunk_shape, generator=g, dtype=torch.float32) for g in generators])


def run(request: SampleRequest, ctx: RunContext) -> SampleResponse:
    settings = resolved_settings(request, ctx)
    output_dir = ctx.sandbox.output_dir(request.output_dir)
    positive = _load_encoding(request.positive_encoding_file, "positive_encoding_file", ctx)
    negative = None
    if settings["cfg"] != 1.0:
        if not request.negative_encoding_file:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                "negative_encoding_file: required when sampling_params.cfg != 1 (classifier-free guidance)",
                field="negative_encoding_file",
            )
        negative = _load_encoding(request.negative_encoding_file, "negative_encoding_file", ctx)
    latent, latent_meta = load_latent(request.latent_file, "latent_file", ctx)
    latent_out, metadata = sample_with_models(positive, negative, latent, settings, ctx)
    metadata["source_latent"] = {k: latent_meta.get(k) for k in ("vae_model_name", "scaled_size")}
    path = output_dir / f"sampled_latent_{ctx.file_tag}.pt"
    save_tensors(path, {"format": LATENT_FORMAT, "latent": latent_out, **metadata})
    return SampleResponse(
        request_id=ctx.request_id,
        sampled_latent_file=str(path),
        sampled_latent_shape=list(latent_out.shape),
        sampling_metadata=metadata,
    )


def sample_with_models(
    positive: Encoding,
    negative: Encoding | None,
    latent: torch.Tensor,
    settings: dict[str, Any],
    ctx: RunContext,
    custom: CustomSampling | None = None,
    patches: Sequence[BlockPatch] = (),
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Pin the diffusion model (and its LoRAs) and sample; shared with ``edit`` and the workflow
    nodes. ``settings["loras"]`` (pairs of name and strength) applies several LoRAs at once; the
    conditionings' ControlNets and the model's block-wise ``patches`` are loaded beside it."""
    if positive.prompt_embeds.shape[-1] != (negative or positive).prompt_embeds.shape[-1]:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            "negative_encoding_file: embedding width differs from the positive encoding's",
            field="negative_encoding_file",
        )
    started = time.perf_counter()
    guided = settings["cfg"] != 1.0 and negative is not None
    controls = Controls([positive.controls, *([negative.controls] if guided else [])], patches)
    with ExitStack() as stack:
        model = stack.enter_context(
            ctx.use_model(ModelKind.DIFFUSION, settings["unet_model_name"], "unet_model_name")
        )
        if controls and latent.shape[2] != 1:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                "latent_image: ControlNets and model patches steer one-image latents, not layered ones",
                field="latent_image",
            )
        if controls:
            size = (latent.shape[-2] + latent.shape[-2] % 2, latent.shape[-1] + latent.shape[-1] % 2)
            controls.prepare(
                enter_models(stack, ctx),
                model.transformer,
                size,
                settings["shift"],
                model.device,
                model.dtype,
                ctx,
            )
        loaded: dict[str, Any] = {}
        for name, _ in _lora_chain(settings):
            if name not in loaded:
                loaded[name] = stack.enter_context(ctx.use_model(ModelKind.LORA, name, "lora_model_name"))
        loras = [(loaded[name], strength) for name, strength in _lora_chain(settings)]
        try:
            out = sample(model, loras, positive, negative, latent, settings, ctx, custom, controls)
        except GenserveError:
            raise
        except Exception as exc:
            raise GenserveError(
                ErrorCode.SAMPLING_FAILED, f"sampling failed: {type(exc).__name__}: {exc}"
            ) from exc
    metadata = {**settings, "sample_ms": round((time.perf_counter() - started) * 1000, 3)}
    return out, metadata


def _lora_chain(settings: dict[str, Any]) -> list[tuple[str, float]]:
    """The LoRAs to apply with their strengths: ``settings["loras"]`` when given (a workflow's
    chain of LoraLoaderModelOnly nodes), else the request's one ``lora_model_name``, if any."""
    if settings.get("loras") is not None:
        return [(name, float(strength)) for name, strength in settings["loras"]]
    name = settings.get("lora_model_name")
    return [(name, float(settings["lora_strength"]))] if name else []


SERVICE = Service(
    name="sampling",
    request_model=SampleRequest,
    response_model=SampleResponse,
    run=run,
    description="Denoise a latent with the diffusion model (and LoRA) under the given encodings.",
)
