"""drawthings GenerateImage over the wire: every field has an effect or is refused by name."""

from __future__ import annotations

import io
import json

import grpc
import pytest
from PIL import Image

from genserve.api.grpc.gen import image_generation_pb2 as pb
from genserve.api.grpc.gen import image_generation_pb2_grpc as rpc
from tests.integration.grpc.conftest import error_code


def generate(channel: grpc.Channel, **fields: object) -> pb.ImageGenerationResponse:
    base: dict[str, object] = {
        "prompt": "a red square on a blue field",
        "width": 64,
        "height": 64,
        "steps": 2,
    }
    return rpc.ImageGenerationServiceStub(channel).GenerateImage(
        pb.ImageGenerationRequest(**{**base, **fields})
    )


def sizes(response: pb.ImageGenerationResponse) -> list[tuple[int, int]]:
    out = []
    for data in response.images:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            out.append(image.size)
    return out


def test_batches_seeds_info_and_events(channel: grpc.Channel) -> None:
    response = generate(channel, seed=5, sampler="Euler", cfg_scale=1.0, batch_size=2, batch_count=2)
    assert sizes(response) == [(64, 64)] * 4
    info = json.loads(response.info)
    assert info["seed"] == 5 and info["seeds"] == [5, 6, 7, 8]
    assert info["sampler"] == "euler" and info["batch_size"] == 2 and info["batch_count"] == 2
    events = list(response.events)
    assert events[0] == "text encoded" and "sampling step 1/2" in events and "image decoded" in events
    assert events.count("image decoded") == 4
    again = generate(channel, seed=5, sampler="Euler", cfg_scale=1.0, batch_size=2, batch_count=2)
    assert list(again.images) == list(response.images)  # same seed, same bytes


def test_success_carries_the_request_id_and_seeds_stay_in_int64(channel: grpc.Channel) -> None:
    stub = rpc.ImageGenerationServiceStub(channel)
    request = pb.ImageGenerationRequest(prompt="x", width=64, height=64, steps=1)
    _, call = stub.GenerateImage.with_call(request, metadata=(("x-request-id", "gen-7"),))
    assert dict(call.trailing_metadata())["x-request-id"] == "gen-7"
    with pytest.raises(grpc.RpcError) as info:
        generate(channel, seed=2**63 - 1, batch_size=2)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "seed" in info.value.details() and str(2**63 - 2) in info.value.details()  # type: ignore[attr-defined]
    assert json.loads(generate(channel, seed=2**63 - 2, batch_size=2).info)["seeds"] == [2**63 - 2, 2**63 - 1]


def test_random_seed_is_reported_and_reproducible(channel: grpc.Channel) -> None:
    first = generate(channel, seed=-1)
    seed = json.loads(first.info)["seed"]
    assert seed >= 0
    assert list(generate(channel, seed=seed).images) == list(first.images)


def test_cfg_uses_the_negative_prompt(channel: grpc.Channel) -> None:
    plain = generate(channel, seed=1, cfg_scale=1.0, negative_prompt="green")
    guided = generate(channel, seed=1, cfg_scale=4.0, negative_prompt="green")
    assert list(plain.images) != list(guided.images)
    assert json.loads(guided.info)["cfg_scale"] == 4.0


def test_enable_hr_doubles_the_size_with_its_denoising_strength(channel: grpc.Channel) -> None:
    response = generate(channel, seed=2, enable_hr=True, denoising_strength=0.5)
    assert sizes(response) == [(128, 128)]
    assert any(e.startswith("hires pass step") for e in response.events)
    assert json.loads(response.info)["denoising_strength"] == 0.5


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"width": 100}, "width"),
        ({"height": 4096}, "height"),
        ({"restore_faces": True}, "restore_faces"),
        ({"denoising_strength": 0.5}, "denoising_strength"),
        ({"sampler": "DDIM magic"}, "sampler"),
        ({"batch_size": 100}, "batch_size"),
        ({"steps": 5000}, "steps"),
    ],
)
def test_bad_fields_are_refused_by_name(channel: grpc.Channel, fields: dict[str, object], named: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        generate(channel, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value  # type: ignore[attr-defined]
    assert named in info.value.details() and error_code(info.value) == "INVALID_INPUT"  # type: ignore[attr-defined]
