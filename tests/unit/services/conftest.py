"""Helpers for service tests: run a service through the engine, and a ready split chain."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import torch

from genserve.app.runtime import Runtime, build_runtime
from genserve.config import Settings
from genserve.errors import ErrorCode, GenserveError

LORA = "Qwen-Image-Lightning-4steps-V2.0.safetensors"


@pytest.fixture
def run(runtime: Runtime) -> Callable[..., Any]:
    def call(service: str, request: dict[str, Any], **kwargs: Any) -> Any:
        return runtime.engine.run_sync(service, request, **kwargs)

    return call


@pytest.fixture
def fails(run: Callable[..., Any]) -> Callable[..., GenserveError]:
    """Run a request that must fail with ``code``; returns the error for further checks."""

    def call(code: ErrorCode, service: str, request: dict[str, Any], **kwargs: Any) -> GenserveError:
        with pytest.raises(GenserveError) as info:
            run(service, request, **kwargs)
        assert info.value.code is code, info.value
        return info.value

    return call


@pytest.fixture
def chain(run: Callable[..., Any], data_root: Path) -> dict[str, Any]:
    """A latent file and positive/negative encodings made by the real services."""
    latent = run("latent_encoder", {"image_path": str(data_root / "inputs/person.png")})
    encodings = run(
        "text_encoder",
        {
            "image1_path": str(data_root / "inputs/person.png"),
            "image2_path": str(data_root / "inputs/cloth.png"),
            "prompt": "put the red shirt from picture 2 on the person",
            "negative_prompt": "blurry",
        },
    )
    return {
        "latent_file": latent.latent_file_path,
        "positive_encoding_file": encodings.positive_encoding_file,
        "negative_encoding_file": encodings.negative_encoding_file,
    }


def load_latent(path: str) -> torch.Tensor:
    return torch.load(path, weights_only=True)["latent"]


@pytest.fixture
def cpu_runtime(settings: Settings) -> Iterator[Runtime]:
    """The small test settings with the models fixed to float32 on CPU."""
    models = settings.models.model_copy(update={"default_device": "cpu", "dtype": "float32"})
    with build_runtime(settings.model_copy(update={"models": models})) as rt:
        yield rt


def diffusers_components(rt: Runtime, stack: ExitStack, *, with_processor: bool = False) -> dict[str, Any]:
    """The runtime's own loaded models as diffusers pipeline components (pinned for the stack),
    with the scheduler genserve's defaults describe: what both parity tests compare against."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    defaults = rt.settings.pipeline
    vae = stack.enter_context(rt.models.use("vae", defaults.vae_model_name))
    text_encoder = stack.enter_context(rt.models.use("text_encoders", defaults.clip_model_name))
    diffusion = stack.enter_context(rt.models.use("diffusion_models", defaults.unet_model_name))
    components = {
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=defaults.shift, use_dynamic_shifting=False),
        "vae": vae.module,
        "text_encoder": text_encoder.model,
        "tokenizer": text_encoder.processor.tokenizer,
        "transformer": diffusion.transformer,
    }
    if with_processor:  # the edit pipeline's image processor
        components["processor"] = text_encoder.processor
    return components
