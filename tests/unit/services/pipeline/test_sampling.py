from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from genserve.errors import ErrorCode
from genserve.services.pipeline import examples, samplers
from tests.unit.services.conftest import LORA, load_latent


def _sample(run, chain: dict[str, Any], **overrides: Any) -> torch.Tensor:
    params = dict(examples.REQUESTS["sampling"]["sampling_params"])
    params.update(overrides.pop("params", {}))
    request = {
        **chain,
        "unet_model_name": "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
        "sampling_params": params,
    }
    request.update(overrides)
    return load_latent(run("sampling", request).sampled_latent_file)


def test_spec_request_shape_metadata_and_progress(run, chain: dict[str, Any]) -> None:
    events: list[tuple[str, int, int]] = []
    response = run(
        "sampling",
        {**examples.REQUESTS["sampling"], **chain},
        progress=lambda e: events.append((e.stage, e.step, e.total)),
    )
    assert response.sampled_latent_shape == list(load_latent(chain["latent_file"]).shape)
    meta = response.sampling_metadata
    assert (meta["steps"], meta["shift"], meta["lora_model_name"], meta["cfg_norm_strength"]) == (
        4,
        3.0,
        LORA,
        1.0,
    )
    assert [e for e in events if e[0] == "step"] == [("step", i, 4) for i in range(1, 5)]


def test_seed_determinism(run, chain) -> None:
    first, again = _sample(run, chain), _sample(run, chain)
    assert torch.equal(first, again)
    assert not torch.allclose(first, _sample(run, chain, params={"seed": 7}))


def test_every_parameter_takes_effect(run, chain) -> None:
    base = _sample(run, chain)
    changed = {
        "steps": _sample(run, chain, params={"steps": 3}),
        "shift": _sample(run, chain, model_transform_params={"shift": 1.0}),
        "cfg_norm_strength": _sample(run, chain, model_transform_params={"strength": 0.5}),
        "cfg": _sample(run, chain, params={"cfg": 4.0}),
        "lora": _sample(run, chain, lora_model_name=LORA),
        "scheduler": _sample(run, chain, params={"scheduler": "karras"}),
        "sampler": _sample(run, chain, params={"sampler_name": "heun"}),
    }
    for name, latent in changed.items():
        assert not torch.allclose(latent, base, atol=1e-5), name


def test_lora_strength_zero_is_the_base_model_exactly(run, chain) -> None:
    base = _sample(run, chain)
    assert torch.equal(_sample(run, chain, lora_model_name=LORA, lora_strength=0.0), base)
    full = _sample(run, chain, lora_model_name=LORA, lora_strength=1.0)
    half = _sample(run, chain, lora_model_name=LORA, lora_strength=0.5)
    assert not torch.allclose(full, half)
    assert torch.equal(_sample(run, chain), base)  # the adapter is off again afterwards


def test_cfg_uses_the_negative_encoding(run, chain, data_root: Path) -> None:
    other_negative = run(
        "text_encoder",
        {
            "image1_path": "inputs/person.png",
            "image2_path": "inputs/cloth.png",
            "prompt": "x",
            "negative_prompt": "ugly",
        },
    ).negative_encoding_file
    guided = _sample(run, chain, params={"cfg": 4.0})
    assert not torch.allclose(
        guided, _sample(run, chain, params={"cfg": 4.0}, negative_encoding_file=other_negative)
    )
    # with cfg 1 the negative is skipped, so changing it changes nothing
    assert torch.equal(_sample(run, chain), _sample(run, chain, negative_encoding_file=other_negative))


def test_denoise_below_one_starts_from_the_input_latent(run, chain) -> None:
    source = load_latent(chain["latent_file"])
    full = _sample(run, chain)
    partial = _sample(run, chain, params={"denoise": 0.3})
    assert (partial - source).abs().mean() < (full - source).abs().mean()


@pytest.mark.parametrize("sampler", list(samplers.SAMPLERS))
@pytest.mark.parametrize("scheduler", list(samplers.SCHEDULERS))
def test_each_sampler_and_scheduler_runs(run, chain, sampler: str, scheduler: str) -> None:
    latent = _sample(run, chain, params={"sampler_name": sampler, "scheduler": scheduler, "steps": 3})
    assert torch.isfinite(latent).all()


def test_unknown_names_list_the_accepted_ones(fails, chain) -> None:
    request = {**chain, "sampling_params": {"sampler_name": "euler_a_turbo"}}
    err = fails(ErrorCode.INVALID_INPUT, "sampling", request)
    assert "sampler_name" in err.message and all(name in err.message for name in samplers.SAMPLERS)
    err = fails(ErrorCode.INVALID_INPUT, "sampling", {**chain, "sampling_params": {"scheduler": "cosine"}})
    assert "scheduler" in err.message and all(name in err.message for name in samplers.SCHEDULERS)


def test_input_errors(fails, chain, data_root: Path) -> None:
    no_negative = {k: v for k, v in chain.items() if k != "negative_encoding_file"}
    err = fails(ErrorCode.INVALID_INPUT, "sampling", {**no_negative, "sampling_params": {"cfg": 2.0}})
    assert "negative_encoding_file" in err.message
    fails(ErrorCode.NOT_FOUND, "sampling", {**chain, "latent_file": str(data_root / "outputs/none.pt")})
    fails(ErrorCode.MODEL_NOT_FOUND, "sampling", {**chain, "unet_model_name": "flux.safetensors"})
    fails(ErrorCode.MODEL_NOT_FOUND, "sampling", {**chain, "lora_model_name": "none.safetensors"})
    fails(ErrorCode.INVALID_INPUT, "sampling", {**chain, "sampling_params": {"steps": 0}})
    fails(ErrorCode.INVALID_INPUT, "sampling", {**chain, "sampling_params": {"denoise": 1.5}})
    fails(ErrorCode.INVALID_INPUT, "sampling", {**chain, "latent_file": chain["positive_encoding_file"]})
    bad = data_root / "outputs/flat.pt"
    torch.save({"latent": torch.zeros(1, 16, 8, 8)}, bad)
    err = fails(ErrorCode.INVALID_INPUT, "sampling", {**chain, "latent_file": str(bad)})
    assert "latent_file" in err.message


def test_pickled_objects_are_refused(fails, chain, data_root: Path) -> None:
    class Payload:
        def __reduce__(self):  # would run code on an unsafe torch.load
            return (print, ("owned",))

    evil = data_root / "outputs/evil.pt"
    torch.save({"latent": Payload()}, evil)
    err = fails(ErrorCode.INVALID_INPUT, "sampling", {**chain, "latent_file": str(evil)})
    assert "not a readable tensor file" in err.message


def test_encoding_from_another_model_is_sampling_failed(fails, chain, data_root: Path) -> None:
    positive = torch.load(chain["positive_encoding_file"], weights_only=True)
    positive["prompt_embeds"] = torch.randn(
        1, positive["prompt_embeds"].shape[1], 32
    )  # 32-wide, model wants 64
    foreign = data_root / "outputs/foreign.pt"
    torch.save(positive, foreign)
    err = fails(ErrorCode.SAMPLING_FAILED, "sampling", {**chain, "positive_encoding_file": str(foreign)})
    assert "sampling failed" in err.message


def test_cancellation_is_checked_every_step(runtime, chain) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def on_progress(event) -> None:
        if event.stage == "step":
            seen.append(event.step)
            cancel.set()

    with pytest.raises(Exception) as info:
        runtime.engine.run_sync(
            "sampling", {**chain, "sampling_params": {"steps": 20}}, progress=on_progress, cancel=cancel
        )
    assert getattr(info.value, "code", None) is ErrorCode.CANCELLED
    assert 1 <= len(seen) < 20


def test_schedules_match_comfyui() -> None:
    simple = samplers.sigma_schedule("simple", 4, 3.0)
    assert torch.allclose(simple, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    partial = samplers.sigma_schedule("simple", 4, 3.0, denoise=0.5)
    assert torch.allclose(partial, samplers.sigma_schedule("simple", 8, 3.0)[-5:])
    for name in samplers.SCHEDULERS:
        sigmas = samplers.sigma_schedule(name, 6, 3.0)
        assert len(sigmas) == 7 and sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all()), name


def test_cfg_norm_caps_the_guided_norm() -> None:
    cond = torch.ones(1, 4, 16, 4)
    guided = cond * 3
    normed = samplers.cfg_norm(guided, cond, 1.0, channel_dim=2)
    assert torch.allclose(normed, cond, atol=1e-6)
    assert torch.allclose(samplers.cfg_norm(cond, cond, 0.5, channel_dim=2), cond * 0.5)
