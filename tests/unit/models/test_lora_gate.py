"""Concurrent runs with different LoRA settings on one shared transformer never see each other's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from genserve.app.runtime import build_runtime
from tests.conftest import small_settings

LORA = "Qwen-Image-Lightning-4steps-V2.0.safetensors"


def test_concurrent_lora_strengths_match_sequential(demo_models: Path, data_root: Path) -> None:
    settings = small_settings(demo_models, data_root, GENSERVE_ENGINE__WORKERS_PER_DEVICE="4")
    with build_runtime(settings) as rt:
        engine = rt.engine
        latent = engine.run_sync("latent_encoder", {"image_path": "inputs/person.png"}).latent_file_path
        enc = engine.run_sync("text_encoder", {"image1_path": "inputs/person.png", "prompt": "a hat"})
        base = {"positive_encoding_file": enc.positive_encoding_file, "latent_file": latent}
        variants = [
            {"lora_model_name": ""},
            {"lora_model_name": LORA, "lora_strength": 1.0},
            {"lora_model_name": LORA, "lora_strength": 0.3},
            {"lora_model_name": LORA, "lora_strength": -1.0},
        ] * 3

        def load(response) -> torch.Tensor:
            return torch.load(response.sampled_latent_file, weights_only=True)["latent"]

        expected = [load(engine.run_sync("sampling", {**base, **v})) for v in variants[:4]]

        async def together() -> list:
            return await asyncio.gather(*(engine.submit("sampling", {**base, **v}) for v in variants))

        results = [load(r) for r in asyncio.run(together())]
    for i, latent_out in enumerate(results):
        assert torch.equal(latent_out, expected[i % 4]), variants[i]
    assert not torch.equal(expected[0], expected[1]) and not torch.equal(expected[1], expected[2])
