"""The ``pipeline`` section: the Qwen-Image-Edit pipeline's defaults, as in the original ComfyUI graph."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genserve.config.base import Section

# The names the sampling code accepts, kept here (torch-free) so that a bad default in the config
# stops start-up; tests/unit/config/test_settings.py checks they match services/pipeline/samplers.py.
SamplerName = Literal["euler", "euler_ancestral", "heun", "dpmpp_2m"]
SchedulerName = Literal["simple", "normal", "sgm_uniform", "karras", "exponential"]
UpscaleMethod = Literal["nearest", "bilinear", "bicubic", "area", "lanczos"]


class PipelineSettings(Section):
    """Defaults of the Qwen-Image-Edit pipeline, as in the original ComfyUI graph."""

    vae_model_name: str = Field("qwen_image_vae.safetensors", description="VAE when a request names none.")
    clip_model_name: str = Field(
        "qwen_2.5_vl_7b_fp8_scaled.safetensors", description="Text encoder when a request names none."
    )
    unet_model_name: str = Field(
        "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
        description="Diffusion model when a request names none.",
    )
    lora_model_name: str | None = Field(
        None, description="LoRA applied when a request names none (null: no LoRA)."
    )
    vae_reference_megapixels: float = Field(
        1.0, gt=0, le=16, description="Area the text encoder resizes each reference image to for the VAE."
    )
    vision_reference_megapixels: float = Field(
        384 * 384 / 1_000_000,
        gt=0,
        le=4,
        description="Area each reference image gets for the vision encoder.",
    )
    steps: int = Field(4, ge=1, le=1000)
    cfg: float = Field(1.0, ge=0)
    sampler_name: SamplerName = "euler"
    scheduler: SchedulerName = "simple"
    denoise: float = Field(1.0, gt=0, le=1)
    shift: float = Field(3.0, gt=0)
    cfg_norm_strength: float = Field(1.0, ge=0)
    lora_strength: float = 1.0
    upscale_method: UpscaleMethod = "lanczos"
    megapixels: float = Field(1.0, gt=0, le=16)
    output_format: Literal["jpg", "png", "webp"] = "jpg"
    jpeg_quality: int = Field(95, ge=1, le=100, description="Quality for jpg and webp outputs.")
