"""LoraLoaderModelOnly nodes chain as in ComfyUI: every LoRA of the chain applies at its strength.

A KSampler after ``LoRA a (0.5) -> LoRA b (-2.0)`` gives the latent of one LoRA whose delta is
``0.5 * delta_a - 2 * delta_b`` (see tests/unit/models/loaders/test_lora_stacking.py), in either
order; and the shared transformer keeps nothing of a chain for the prompts that come after it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from genserve.app.runtime import Runtime, build_runtime
from genserve.models.demo.pipeline import DEMO_TEXT_ENCODER, DEMO_TRANSFORMER
from genserve.workflows.nodes.base import NodeContext
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.nodes.values import ModelRef
from tests.conftest import small_settings
from tests.unit.models.loaders.test_lora_stacking import write_random_lora, write_summed_lora

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


@pytest.fixture
def lora_runtime(demo_models: Path, data_root: Path, tmp_path: Path) -> Iterator[Runtime]:
    """The demo pipeline models with two test LoRAs and the LoRA that is their weighted sum."""
    models = tmp_path / "models"
    for kind in ("diffusion_models", "text_encoders", "vae", "loras"):
        shutil.copytree(demo_models / kind, models / kind)
    loras = models / "loras"
    transformer = models / "diffusion_models" / DEMO_TRANSFORMER
    a = write_random_lora(loras / "a.safetensors", transformer, seed=1, attention_only=True)
    b = write_random_lora(loras / "b.safetensors", transformer, seed=2, attention_only=False)
    write_summed_lora(loras / "sum.safetensors", [(a, 0.5), (b, -2.0)])
    with build_runtime(small_settings(models, data_root)) as rt:
        yield rt


def test_a_lora_chain_samples_as_its_summed_lora(lora_runtime: Runtime, data_root: Path) -> None:
    registry = pipeline_registry(lora_runtime.models.registry, data_root / "inputs")
    resources = PipelineResources.from_runtime(lora_runtime, input_dir=data_root / "inputs")

    def node(name: str, **inputs: Any) -> Any:
        return registry[name].call(NodeContext("p", "1", name, resources=resources), inputs).outputs[0]

    clip = node("CLIPLoader", clip_name=DEMO_TEXT_ENCODER, type="qwen_image")
    positive = node("CLIPTextEncode", text="a red apple", clip=clip)
    latent = node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    unet = node("UNETLoader", unet_name=DEMO_TRANSFORMER, weight_dtype="default")

    def chained(*loras: tuple[str, float]) -> ModelRef:
        model = unet
        for name, strength in loras:
            model = node("LoraLoaderModelOnly", model=model, lora_name=name, strength_model=strength)
        return model

    def sampled(model: ModelRef) -> torch.Tensor:
        common = {"seed": 3, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}
        inputs = {"model": model, "positive": positive, "negative": positive, "latent_image": latent}
        return node("KSampler", **inputs, **common)["samples"]

    base = sampled(unet)
    single = sampled(chained(("a.safetensors", 0.5)))
    chain_model = chained(("a.safetensors", 0.5), ("b.safetensors", -2.0))
    assert chain_model.loras == (("a.safetensors", 0.5), ("b.safetensors", -2.0))
    chain = sampled(chain_model)
    summed = sampled(chained(("sum.safetensors", 1.0)))
    assert (chain - base).abs().max() > 1e-3 and (chain - single).abs().max() > 1e-3
    assert torch.allclose(chain, summed, atol=1e-4, rtol=1e-4), (chain - summed).abs().max()
    reversed_chain = chained(("b.safetensors", -2.0), ("a.safetensors", 0.5))
    assert torch.equal(sampled(reversed_chain), chain)
    # Strengths scale the deltas: a at 0.25 twice is a at 0.5; a at 0.5 twice is not.
    assert torch.equal(sampled(chained(("a.safetensors", 0.25), ("a.safetensors", 0.25))), single)
    assert not torch.equal(sampled(chained(("a.safetensors", 0.5), ("a.safetensors", 0.5))), single)
    # After the chains, one LoRA and the plain model give what they gave before.
    assert torch.equal(sampled(chained(("a.safetensors", 0.5))), single)
    assert torch.equal(sampled(unet), base)
    assert all(stats.pinned == 0 for stats in lora_runtime.models.stats())
