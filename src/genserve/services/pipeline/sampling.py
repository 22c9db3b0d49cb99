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
from genserve.models.registry import ModelKind
from genserve.services.base import RunContext, Service, ServiceModel
from genserve.services.pipeline import samplers
from genserve.services.pipeline.control import BlockPatch, Controls, enter_models, padded
from genserve.services.pipeline.custom_sampling import CustomSampling
from genserve.services.pipeline.imaging import pack, unpack
from genserve.services.pipeline.latent_encoder import LATENT_FORMAT
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
    _check_channels(model, latent, settings)
    custom = custom or CustomSampling()
    batch, _, _, height, width = latent.shape
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
    noise = _seeded_noise(seeds, (batch // len(seeds), 1, *latent.shape[1:2], height, width))
    noise = noise.view(latent.shape) if custom.add_noise else torch.zeros(latent.shape)
    # An odd latent side (a ComfyUI size such as 1128 px, 141 latent pixels) is padded to the 2x2
    # patch grid circularly, as ComfyUI's Qwen model pads, and cropped off again at the end.
    crop_to = (height, width)
    latent, noise = _to_patch_grid(latent.float()), _to_patch_grid(noise)
    height, width = latent.shape[-2:]
    x = pack(noise) * sigmas[0] + pack(latent.float()) * (1 - sigmas[0])
    x = x.to(device=model.device, dtype=model.dtype)
    guided = settings["cfg"] != 1.0
    conditions = [positive] + ([negative] if guided and negative is not None else [])
    denoiser: samplers.Denoiser = _Denoiser(
        model, conditions, positive.reference_latents, latent.shape, settings, ctx, controls
    )
    denoiser = custom.wrap(denoiser, noise, latent, x)
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
        custom.last_denoised = unpack(custom.last_denoised.float().cpu(), height, width)[..., :rows, :cols]
    return unpack(x.float().cpu(), height, width)[..., :rows, :cols]


def _to_patch_grid(latent: torch.Tensor) -> torch.Tensor:
    """``[B, C, 1, H, W]`` padded circularly to even H and W (unchanged when already even)."""
    batch, channels, frames, height, width = latent.shape
    if not height % 2 and not width % 2:
        return latent
    flat = latent.reshape(batch, channels * frames, height, width)
    padded = torch.nn.functional.pad(flat, (0, width % 2, 0, height % 2), mode="circular")
    return padded.reshape(batch, channels, frames, *padded.shape[-2:])


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


def _seeded_noise(seeds: list[int], chunk_shape: tuple[int, ...]) -> torch.Tensor:
    """One chunk of the batch per seed, each drawn by its own CPU generator (device-independent)."""
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    return torch.cat([torch.randn(chunk_shape, generator=g, dtype=torch.float32) for g in generators])


class _Denoiser:
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
        self.batch, self.channels, _, height, width = shape
        self.transformer, self.device, self.dtype = model.transformer, device, dtype
        self.cfg, self.cfg_norm_strength, self.ctx = settings["cfg"], settings["cfg_norm_strength"], ctx
        self.references = [
            pack(r.to(device=device, dtype=dtype)).expand(self.batch, -1, -1) for r in references
        ]
        own = (1, height // 2, width // 2)
        self.img_shapes = [[own, *[(1, r.shape[-2] // 2, r.shape[-1] // 2) for r in references]]] * self.batch
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
        extra: dict[str, Any] = {}
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
