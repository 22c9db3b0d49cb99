"""image_generation: Qwen-Image text-to-image on the demo models, every field taking effect or refused.

One runtime for the module (the models load once); small images and 2 steps keep each case fast.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from genserve.app.runtime import Runtime, build_runtime
from genserve.errors import ErrorCode, GenserveError
from genserve.services.base import ProgressEvent
from genserve.services.builtin import SERVICES
from genserve.services.pipeline.image_generation import RANDOM_SEEDS, ImageGenerationResponse
from tests.conftest import small_settings

BASE = {"prompt": "a red apple on a wooden table", "width": 64, "height": 64, "steps": 2, "seed": 7}
PNG = b"\x89PNG\r\n\x1a\n"
# A batch runs the transformer on several images at once; its float rounding differs from a run
# on one image, so an image of a batch matches its seed's image alone up to 1 level on a handful
# of values (measured: max 1 on <= 0.01% of values), never bit for bit.
BATCH_MAX_DIFF = 1
BATCH_MAX_DIFFERING = 0.001


@pytest.fixture(scope="module")
def rt(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("data")
    (root / "inputs").mkdir()
    (root / "outputs").mkdir()
    with build_runtime(small_settings(demo_models, root)) as runtime:
        yield runtime


def generate(rt: Runtime, **fields: Any) -> ImageGenerationResponse:
    response = rt.engine.run_sync("image_generation", {**BASE, **fields})
    assert isinstance(response, ImageGenerationResponse)
    return response


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def refused(rt: Runtime, field: str, **fields: Any) -> GenserveError:
    with pytest.raises(GenserveError) as info:
        generate(rt, **fields)
    err = info.value
    assert err.code is ErrorCode.INVALID_INPUT, err
    assert err.message.startswith(f"{field}:"), err.message
    assert err.details.get("field") == field
    return err


def test_is_in_the_catalog() -> None:
    assert SERVICES["image_generation"].request_model.__name__ == "ImageGenerationRequest"


def test_generates_pngs_with_info_and_events(rt: Runtime) -> None:
    seen: list[ProgressEvent] = []
    response = rt.engine.run_sync(
        "image_generation", {**BASE, "width": 128, "height": 64}, progress=seen.append
    )
    assert response.status == "success" and len(response.images) == 1
    assert response.images[0].startswith(PNG)
    assert pixels(response.images[0]).shape == (64, 128, 3)
    assert response.events == ["text encoded", "sampling step 1/2", "sampling step 2/2", "image decoded"]
    assert [e.message for e in seen if e.stage != "load"] == response.events
    info = json.loads(response.info)
    defaults = rt.settings.pipeline
    assert info["width"] == 128 and info["height"] == 64 and info["steps"] == 2
    assert info["seed"] == 7 and info["seeds"] == [7]
    assert info["cfg_scale"] == defaults.cfg and info["sampler"] == defaults.sampler_name
    assert info["scheduler"] == defaults.scheduler and info["shift"] == defaults.shift
    assert info["enable_hr"] is False and info["denoising_strength"] is None
    assert info["batch_size"] == 1 and info["batch_count"] == 1
    assert info["unet_model_name"] == defaults.unet_model_name
    assert info["clip_model_name"] == defaults.clip_model_name
    assert info["vae_model_name"] == defaults.vae_model_name
    assert {"text_encode_ms", "sample_ms", "decode_ms", "total_ms"} <= set(info["timings_ms"])


def test_response_serialises_to_json_with_base64_images(rt: Runtime) -> None:
    response = generate(rt)
    body = json.loads(response.model_dump_json())
    assert base64.b64decode(body["images"][0]) == response.images[0]
    assert ImageGenerationResponse.model_validate_json(response.model_dump_json()) == response
    assert response.model_dump(mode="json")["images"] == body["images"]


def test_same_seed_is_byte_identical_and_another_seed_differs(rt: Runtime) -> None:
    first, again = generate(rt).images[0], generate(rt).images[0]
    assert first == again
    other = generate(rt, seed=8).images[0]
    assert float(np.abs(pixels(other) - pixels(first)).mean()) > 1.0


def test_random_seed_is_reported_and_reproduces_the_image(rt: Runtime) -> None:
    response = generate(rt, seed=-1)
    seed = json.loads(response.info)["seed"]
    assert 0 <= seed < RANDOM_SEEDS
    assert generate(rt, seed=seed).images[0] == response.images[0]


def test_cfg_scale_runs_true_cfg_with_the_negative_prompt(rt: Runtime) -> None:
    plain = generate(rt, cfg_scale=1.0, negative_prompt="blurry")
    guided = generate(rt, cfg_scale=4.0, negative_prompt="blurry")
    other_negative = generate(rt, cfg_scale=4.0, negative_prompt="a green pear")
    assert json.loads(plain.info)["negative_prompt_used"] is False
    assert json.loads(guided.info)["negative_prompt_used"] is True
    assert plain.images[0] != guided.images[0]
    assert guided.images[0] != other_negative.images[0]
    # cfg 1 never looks at the negative prompt
    assert generate(rt, cfg_scale=1.0, negative_prompt="a green pear").images[0] == plain.images[0]


def test_steps_sampler_scheduler_and_shift_each_change_the_image(rt: Runtime) -> None:
    base = generate(rt, sampler="euler", scheduler="simple", shift=3.0).images[0]
    changed = {
        "steps": generate(rt, steps=3),
        "sampler": generate(rt, sampler="euler_ancestral"),
        "scheduler": generate(rt, scheduler="karras"),
        "shift": generate(rt, shift=1.0),
    }
    for name, response in changed.items():
        assert response.images[0] != base, name


@pytest.mark.parametrize(
    ("alias", "name"),
    [("Euler", "euler"), ("Euler a", "euler_ancestral"), ("DPM++ 2M", "dpmpp_2m"), ("Heun", "heun")],
)
def test_a1111_sampler_names_map_to_the_same_sampler(rt: Runtime, alias: str, name: str) -> None:
    by_alias, by_name = generate(rt, sampler=alias), generate(rt, sampler=name)
    assert json.loads(by_alias.info)["sampler"] == name
    assert by_alias.images[0] == by_name.images[0]


def test_batches_give_each_image_its_own_seed(rt: Runtime) -> None:
    response = generate(rt, seed=10, batch_size=2, batch_count=2, width=128)
    info = json.loads(response.info)
    assert info["seeds"] == [10, 11, 12, 13] and len(response.images) == 4
    assert response.events.count("image decoded") == 4
    assert response.events.count("sampling step 1/2") == 2
    for k, image in enumerate(response.images):
        alone = pixels(generate(rt, seed=10 + k, width=128).images[0])
        diff = np.abs(pixels(image) - alone)
        assert int(diff.max()) <= BATCH_MAX_DIFF, k
        assert float((diff > 0).mean()) <= BATCH_MAX_DIFFERING, k
    assert float(np.abs(pixels(response.images[0]) - pixels(response.images[1])).mean()) > 1.0


def test_enable_hr_samples_again_at_twice_the_size(rt: Runtime) -> None:
    response = generate(rt, enable_hr=True, width=96, height=64)
    assert pixels(response.images[0]).shape == (128, 192, 3)
    assert response.events == [
        "text encoded",
        "sampling step 1/2",
        "sampling step 2/2",
        "first pass decoded",
        "upscaled to 192x128",
        "hires latent encoded",
        "hires pass step 1/2",
        "hires pass step 2/2",
        "image decoded",
    ]
    info = json.loads(response.info)
    assert info["enable_hr"] is True and info["denoising_strength"] == 0.7
    assert (info["output_width"], info["output_height"]) == (192, 128)
    weak = generate(rt, enable_hr=True, width=96, height=64, denoising_strength=0.2)
    assert weak.images[0] != response.images[0]
    assert json.loads(weak.info)["denoising_strength"] == 0.2


@pytest.mark.parametrize(
    ("field", "fields", "says"),
    [
        ("width", {"width": 100}, "multiple of 16"),
        ("width", {"width": 0}, "multiple of 16"),
        ("height", {"height": 4096}, "between 64 and 2048"),
        ("height", {"height": 48}, "between 64 and 2048"),
        ("steps", {"steps": 0}, "[1, 1000]"),
        ("cfg_scale", {"cfg_scale": -1.0}, "[0, 100]"),
        ("cfg_scale", {"cfg_scale": float("nan")}, "[0, 100]"),
        ("seed", {"seed": -2}, "-1 (random)"),
        ("seed", {"seed": 2**63}, "-1 (random)"),
        ("sampler", {"sampler": "ddim"}, "accepted: euler, euler_ancestral, heun, dpmpp_2m"),
        ("scheduler", {"scheduler": "beta"}, "accepted: simple"),
        ("denoising_strength", {"denoising_strength": 0.5}, "set enable_hr"),
        ("denoising_strength", {"enable_hr": True, "denoising_strength": 0.0}, "(0, 1]"),
        ("denoising_strength", {"enable_hr": True, "denoising_strength": 1.5}, "(0, 1]"),
        ("batch_size", {"batch_size": 0}, "[1, 8]"),
        ("batch_size", {"batch_size": 9}, "[1, 8]"),
        ("batch_count", {"batch_count": 17}, "[1, 16]"),
        ("restore_faces", {"restore_faces": True}, "no face-restoration model is configured"),
        ("shift", {"shift": 0.0}, "(0, 100]"),
        ("lora_strength", {"lora_strength": 11.0}, "[-10, 10]"),
    ],
)
def test_bad_fields_are_refused_by_name(rt: Runtime, field: str, fields: dict[str, Any], says: str) -> None:
    assert says in refused(rt, field, **fields).message


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"width": 2048, "height": 2048, "batch_size": 3}, ["width", "height", "batch_size"]),
        ({"width": 2048, "height": 1040, "enable_hr": True}, ["width", "height", "batch_size", "enable_hr"]),
    ],
)
def test_too_many_pixels_per_batch_are_refused(rt: Runtime, fields: dict[str, Any], named: list[str]) -> None:
    with pytest.raises(GenserveError) as info:
        generate(rt, **fields)
    err = info.value
    assert err.code is ErrorCode.INVALID_INPUT
    assert err.message.startswith(", ".join(named) + ":") and "at most 8388608" in err.message
    assert err.details["fields"] == named


def test_unknown_fields_and_overlong_prompts_are_refused(rt: Runtime) -> None:
    with pytest.raises(GenserveError) as info:
        generate(rt, sampler_name="euler")
    assert info.value.code is ErrorCode.INVALID_INPUT and "sampler_name" in info.value.message
    refused(rt, "prompt", prompt="apple " * 1500)
    refused(rt, "negative_prompt", cfg_scale=2.0, negative_prompt="pear " * 1500)


def test_unknown_models_are_named(rt: Runtime) -> None:
    with pytest.raises(GenserveError) as info:
        generate(rt, unet_model_name="missing")
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND and "unet_model_name" in info.value.message


def test_a_cancelled_request_stops(rt: Runtime) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenserveError) as info:
        rt.engine.run_sync("image_generation", BASE, cancel=cancel)
    assert info.value.code is ErrorCode.CANCELLED
