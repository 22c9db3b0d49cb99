"""image_generation: prompt -> PNG images, Qwen-Image text-to-image in one call.

The fields are txt2img's (A1111, Draw Things); each one takes effect or is refused, naming it:

- ``width``/``height``: multiples of 16 in [64, 2048], default 1024. ``batch_size * width *
  height`` (times 4 with ``enable_hr``) may not pass ``MAX_BATCH_PIXELS``.
- ``steps``, ``cfg_scale``, ``sampler``, ``scheduler``, ``shift``: the sampling service's
  meanings, defaults from the config. ``cfg_scale`` 1 skips the negative prompt; any other value
  runs true classifier-free guidance with it (an empty negative prompt is encoded as such).
  A1111's sampler names are accepted for the same samplers (``SAMPLER_ALIASES``).
- ``seed``: -1 draws one at random. Image ``i`` of batch ``b`` (both from 0) uses
  ``seed + b * batch_size + i``, so any image is reproduced alone by a request with its seed
  and ``batch_size = batch_count = 1``. The seeds used are in ``info``.
- ``batch_size`` images go through the transformer as one batch, each from its own seed's
  noise; ``batch_count`` batches run one after another.
- ``enable_hr``: after the first pass, each image is decoded, upscaled 2x (lanczos),
  VAE-encoded, and sampled again from ``denoising_strength`` (default 0.7) with the same
  prompt, seed, steps and sampler. ``denoising_strength`` without ``enable_hr`` is refused:
  pure text-to-image starts from noise and has nothing to keep.
- ``restore_faces``: refused; genserve has no face-restoration model to configure.

``images`` are PNG bytes in seed order; ``info`` is a JSON string of the settings used;
``events`` names each stage in order: "text encoded", "sampling step i/N", and per image
"image decoded"; with ``enable_hr`` also "first pass decoded", "upscaled to WxH",
"hires latent encoded" and "hires pass step i/N". The same names go to ``ctx.progress``.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from PIL import Image
from pydantic import ConfigDict, Field, field_serializer

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind
from genserve.services.base import ProgressEvent, ProgressSink, RunContext, Service, ServiceModel
from genserve.services.pipeline import samplers
from genserve.services.pipeline.imaging import resize, vae_decode, vae_encode
from genserve.services.pipeline.sampling import (
    ModelTransformParams,
    SampleRequest,
    SamplingParams,
    resolved_settings,
    sample_with_models,
)
from genserve.services.pipeline.text_encoder import MAX_PROMPT_CHARS, Encoding
from genserve.services.pipeline.text_prompt import encode_text_prompts
from genserve.storage.artifacts import encode_image

DEFAULT_SIDE = 1024
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 16
MAX_BATCH_PIXELS = 2 * 2048 * 2048  # e.g. 8 images of 1024x1024 in one batch
MAX_BATCH_SIZE, MAX_BATCH_COUNT = 8, 16
MAX_SEED = 2**63 - 1
RANDOM_SEEDS = 2**32  # a drawn seed is in [0, 2**32), short enough to type back
HR_SCALE, HR_UPSCALER, DEFAULT_HR_DENOISE = 2, "lanczos", 0.7
LATENT_CHANNELS, VAE_SCALE = 16, 8  # Qwen-Image's VAE: 16 channels, 8x down
SAMPLER_ALIASES = {"euler a": "euler_ancestral", "euler_a": "euler_ancestral", "dpm++ 2m": "dpmpp_2m"}
ALIAS_NAMES = "Euler, Euler a, Heun, DPM++ 2M"


class ImageGenerationRequest(ServiceModel):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="Used when cfg_scale != 1.")
    width: int | None = Field(None, description="Multiple of 16 in [64, 2048]; default 1024.")
    height: int | None = Field(None, description="Multiple of 16 in [64, 2048]; default 1024.")
    steps: int | None = Field(None, description="1..1000; default from config.")
    cfg_scale: float | None = Field(None, description="0..100; 1 = no guidance; default from config.")
    seed: int = Field(
        -1, description="-1 = random; else 0..2**63-1. Image i of batch b: seed + b*batch_size + i."
    )
    sampler: str | None = Field(None, description=f"{', '.join(samplers.SAMPLERS)} (or {ALIAS_NAMES}).")
    scheduler: str | None = Field(None, description=f"{', '.join(samplers.SCHEDULERS)}.")
    restore_faces: bool = Field(False, description="Refused: no face-restoration model is available.")
    enable_hr: bool = Field(False, description="Second pass at 2x with denoising_strength.")
    denoising_strength: float | None = Field(None, description="(0, 1], only with enable_hr; default 0.7.")
    batch_size: int | None = Field(None, description="Images per batch, 1..8; default 1.")
    batch_count: int | None = Field(None, description="Batches, 1..16; default 1.")
    unet_model_name: str | None = None
    clip_model_name: str | None = None
    vae_model_name: str | None = None
    lora_model_name: str | None = Field(None, description="LoRA under models/loras; '' for none.")
    lora_strength: float | None = Field(None, description="-10..10.")
    shift: float | None = Field(None, description="AuraFlow sigma shift, (0, 100].")


class ImageGenerationResponse(ServiceModel):
    """In JSON the images are standard base64 strings (pydantic's own "base64" is the URL-safe
    alphabet, which a plain ``b64decode`` misreads); JSON input takes either alphabet."""

    model_config = ConfigDict(val_json_bytes="base64")

    status: Literal["success"] = "success"
    request_id: str
    images: list[bytes] = Field(description="PNG files, batch_count * batch_size of them, in seed order.")
    info: str = Field(description="JSON: the parameters used, the seed of each image, timings.")
    events: list[str] = Field(description="Each stage as it happened.")

    @field_serializer("images", when_used="json")
    def _standard_base64(self, images: list[bytes]) -> list[str]:
        return [base64.b64encode(image).decode("ascii") for image in images]


@dataclass(frozen=True)
class Plan:
    """The request with every default filled in and every value checked."""

    width: int
    height: int
    seed: int
    batch_size: int
    batch_count: int
    denoise: float | None  # the hires pass's; None without enable_hr
    settings: dict[str, Any]  # resolved_settings() for the first pass
    clip_model_name: str
    vae_model_name: str

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.batch_size * self.batch_count)]


def _invalid(field: str, message: str) -> GenserveError:
    return GenserveError(ErrorCode.INVALID_INPUT, f"{field}: {message}", field=field)


def _in_range(field: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    ok = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bound = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise _invalid(field, f"must be in {bound}, got {value!r}")


def _side(field: str, value: int | None) -> int:
    if value is None:
        return DEFAULT_SIDE
    if value % SIDE_MULTIPLE or not MIN_SIDE <= value <= MAX_SIDE:
        raise _invalid(field, f"must be a multiple of 16 between {MIN_SIDE} and {MAX_SIDE}, got {value}")
    return value


def sampler_name(value: str) -> str:
    """The sampler a request names: a genserve name or an A1111 alias, any case."""
    key = value.strip().lower()
    name = key if key in samplers.SAMPLERS else SAMPLER_ALIASES.get(key)
    if name is None:
        raise _invalid(
            "sampler",
            f"unknown sampler {value!r}; accepted: {', '.join(samplers.SAMPLERS)} (or {ALIAS_NAMES})",
        )
    return name


def resolve_plan(request: ImageGenerationRequest, ctx: RunContext) -> Plan:
    d = ctx.defaults
    if request.restore_faces:
        raise _invalid("restore_faces", "no face-restoration model is configured")
    width, height = _side("width", request.width), _side("height", request.height)
    steps = d.steps if request.steps is None else request.steps
    _in_range("steps", steps, 1, 1000)
    cfg = d.cfg if request.cfg_scale is None else request.cfg_scale
    _in_range("cfg_scale", cfg, 0, 100)
    if request.seed != -1 and not 0 <= request.seed <= MAX_SEED:
        raise _invalid("seed", f"must be -1 (random) or in [0, 2**63-1], got {request.seed}")
    sampler = sampler_name(request.sampler or d.sampler_name)
    scheduler = request.scheduler or d.scheduler
    if scheduler not in samplers.SCHEDULERS:
        accepted = ", ".join(samplers.SCHEDULERS)
        raise _invalid("scheduler", f"unknown scheduler {scheduler!r}; accepted: {accepted}")
    shift = d.shift if request.shift is None else request.shift
    _in_range("shift", shift, 0, 100, low_open=True)
    if request.lora_strength is not None:
        _in_range("lora_strength", request.lora_strength, -10, 10)
    denoise = None
    if request.enable_hr:
        denoise = DEFAULT_HR_DENOISE if request.denoising_strength is None else request.denoising_strength
        _in_range("denoising_strength", denoise, 0, 1, low_open=True)
    elif request.denoising_strength is not None:
        raise _invalid("denoising_strength", "only used by the hires pass; set enable_hr to use it")
    batch_size = 1 if request.batch_size is None else request.batch_size
    _in_range("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    batch_count = 1 if request.batch_count is None else request.batch_count
    _in_range("batch_count", batch_count, 1, MAX_BATCH_COUNT)
    images = batch_size * batch_count
    if request.seed != -1 and request.seed + images - 1 > MAX_SEED:
        raise _invalid(
            "seed",
            f"{images} images use seeds {request.seed}..{request.seed + images - 1}, past 2**63-1; "
            f"at most {MAX_SEED - images + 1} for this many images",
        )
    scale = HR_SCALE**2 if request.enable_hr else 1
    if batch_size * width * height * scale > MAX_BATCH_PIXELS:
        fields = ["width", "height", "batch_size"] + (["enable_hr"] if request.enable_hr else [])
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{', '.join(fields)}: {batch_size} x {width}x{height}"
            f"{' x 4 (enable_hr)' if request.enable_hr else ''} = {batch_size * width * height * scale} "
            f"pixels per batch, at most {MAX_BATCH_PIXELS}",
            field=fields[0],
            fields=fields,
        )
    settings = resolved_settings(
        SampleRequest(
            positive_encoding_file="(in memory)",
            latent_file="(in memory)",
            unet_model_name=request.unet_model_name,
            lora_model_name=request.lora_model_name,
            lora_strength=request.lora_strength,
            sampling_params=SamplingParams(
                steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler, denoise=1.0
            ),
            model_transform_params=ModelTransformParams(shift=shift),
        ),
        ctx,
    )
    return Plan(
        width=width,
        height=height,
        seed=secrets.randbelow(RANDOM_SEEDS) if request.seed == -1 else request.seed,
        batch_size=batch_size,
        batch_count=batch_count,
        denoise=denoise,
        settings=settings,
        clip_model_name=request.clip_model_name or d.clip_model_name,
        vae_model_name=request.vae_model_name or d.vae_model_name,
    )


class StageLog:
    """A progress sink that records each stage's name, then passes the event on.

    Sampling steps arrive as the sampler's "step" events; they are named after the current
    ``phase`` ("sampling" or "hires pass"). Model loads are passed on, not recorded.
    """

    def __init__(self, sink: ProgressSink) -> None:
        self._sink = sink
        self.phase = "sampling"
        self.events: list[str] = []

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "step":
            event = replace(event, message=f"{self.phase} step {event.step}/{event.total}")
        if event.stage != "load":
            self.events.append(event.message)
        self._sink(event)


def _decode(
    latents: torch.Tensor, plan: Plan, ctx: RunContext, stage: str, message: str
) -> list[Image.Image]:
    """Each image of a batch decoded on its own (as it would be alone)."""
    images = []
    with ctx.use_model(ModelKind.VAE, plan.vae_model_name, "vae_model_name") as vae:
        if vae.config.z_dim != LATENT_CHANNELS:
            raise _invalid(
                "vae_model_name",
                f"{plan.vae_model_name} decodes {vae.config.z_dim}-channel latents, "
                f"Qwen-Image makes {LATENT_CHANNELS}",
            )
        for i in range(latents.shape[0]):
            ctx.check_cancelled()
            try:
                images.append(vae_decode(vae, latents[i : i + 1]))
            except Exception as exc:
                raise GenserveError(
                    ErrorCode.DECODING_FAILED, f"VAE decoding failed: {type(exc).__name__}: {exc}"
                ) from exc
            ctx.progress(i + 1, latents.shape[0], stage=stage, message=message)
    return images


def _hires_latent(first: list[Image.Image], plan: Plan, ctx: RunContext) -> torch.Tensor:
    size = (plan.width * HR_SCALE, plan.height * HR_SCALE)
    upscaled = [resize(image, size, HR_UPSCALER) for image in first]
    ctx.progress(1, 1, stage="upscale", message=f"upscaled to {size[0]}x{size[1]}")
    with ctx.use_model(ModelKind.VAE, plan.vae_model_name, "vae_model_name") as vae:
        ctx.check_cancelled()
        try:
            latents = [vae_encode(vae, image) for image in upscaled]
        except Exception as exc:
            raise GenserveError(
                ErrorCode.ENCODING_FAILED,
                f"VAE encoding for the hires pass failed: {type(exc).__name__}: {exc}",
            ) from exc
    ctx.progress(1, 1, stage="hires_encode", message="hires latent encoded")
    return torch.cat(latents)


def _batch(
    b: int,
    positive: Encoding,
    negative: Encoding | None,
    plan: Plan,
    ctx: RunContext,
    log: StageLog,
    timings: dict[str, float],
) -> list[bytes]:
    seeds = plan.seeds[b * plan.batch_size : (b + 1) * plan.batch_size]
    first = {**plan.settings, "seed": seeds[0], "seeds": seeds}
    shape = (plan.batch_size, LATENT_CHANNELS, 1, plan.height // VAE_SCALE, plan.width // VAE_SCALE)
    clock = time.perf_counter()
    latents, _ = sample_with_models(positive, negative, torch.zeros(shape), first, ctx)
    timings["sample_ms"] += (time.perf_counter() - clock) * 1000
    if plan.denoise is not None:
        clock = time.perf_counter()
        images = _decode(latents, plan, ctx, "first_pass_decode", "first pass decoded")
        hires = _hires_latent(images, plan, ctx)
        log.phase = "hires pass"
        try:
            latents, _ = sample_with_models(
                positive, negative, hires, {**first, "denoise": plan.denoise}, ctx
            )
        finally:
            log.phase = "sampling"
        timings["hires_ms"] += (time.perf_counter() - clock) * 1000
    clock = time.perf_counter()
    images = _decode(latents, plan, ctx, "decode", "image decoded")
    timings["decode_ms"] += (time.perf_counter() - clock) * 1000
    return [encode_image(image, "png") for image in images]


def _info(request: ImageGenerationRequest, plan: Plan, timings: dict[str, float]) -> str:
    s = plan.settings
    hr = plan.denoise is not None
    info = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "negative_prompt_used": s["cfg"] != 1.0,
        "width": plan.width,
        "height": plan.height,
        "output_width": plan.width * (HR_SCALE if hr else 1),
        "output_height": plan.height * (HR_SCALE if hr else 1),
        "steps": s["steps"],
        "cfg_scale": s["cfg"],
        "seed": plan.seed,
        "seeds": plan.seeds,
        "seed_rule": "image i of batch b (from 0) uses seed + b * batch_size + i",
        "sampler": s["sampler_name"],
        "scheduler": s["scheduler"],
        "shift": s["shift"],
        "cfg_norm_strength": s["cfg_norm_strength"],
        "restore_faces": False,
        "enable_hr": hr,
        "denoising_strength": plan.denoise,
        "hr_scale": HR_SCALE if hr else None,
        "hr_upscaler": HR_UPSCALER if hr else None,
        "batch_size": plan.batch_size,
        "batch_count": plan.batch_count,
        "unet_model_name": s["unet_model_name"],
        "clip_model_name": plan.clip_model_name,
        "vae_model_name": plan.vae_model_name,
        "lora_model_name": s["lora_model_name"],
        "lora_strength": s["lora_strength"] if s["lora_model_name"] else None,
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
    }
    return json.dumps(info)


def run(request: ImageGenerationRequest, ctx: RunContext) -> ImageGenerationResponse:
    started = time.perf_counter()
    plan = resolve_plan(request, ctx)
    log = StageLog(ctx.progress_sink)
    ctx = replace(ctx, progress_sink=log)
    guided = plan.settings["cfg"] != 1.0
    positive, negative, text_ms = encode_text_prompts(
        request.prompt, request.negative_prompt if guided else None, plan.clip_model_name, ctx
    )
    ctx.progress(1, 1, stage="text_encode", message="text encoded")
    timings = {"text_encode_ms": text_ms, "sample_ms": 0.0, "hires_ms": 0.0, "decode_ms": 0.0}
    images: list[bytes] = []
    for b in range(plan.batch_count):
        ctx.check_cancelled()
        images += _batch(b, positive, negative, plan, ctx, log, timings)
    timings["total_ms"] = (time.perf_counter() - started) * 1000
    return ImageGenerationResponse(
        request_id=ctx.request_id, images=images, info=_info(request, plan, timings), events=log.events
    )


SERVICE = Service(
    name="image_generation",
    request_model=ImageGenerationRequest,
    response_model=ImageGenerationResponse,
    run=run,
    description="Qwen-Image text-to-image: prompt -> PNG images (txt2img fields: size, steps, cfg, "
    "seed, sampler, batches, hires pass).",
)
