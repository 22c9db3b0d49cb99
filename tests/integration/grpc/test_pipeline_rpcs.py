"""The pipeline services over gRPC: the spec's LatentEncoder message as written, the others by
the same pattern; errors as status codes with the spec's code in the trailing metadata."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf.message import Message

from genserve.api.grpc.gen import pipeline_pb2 as pb
from genserve.api.grpc.gen import pipeline_pb2_grpc as rpc
from genserve.services.builtin import SERVICES
from genserve.services.pipeline.examples import REQUESTS
from tests.integration.conftest import LiveServer
from tests.integration.grpc.conftest import error_code

PAIRS = {
    "latent_encoder": (pb.EncodeRequest, pb.EncodeResponse),
    "text_encoder": (pb.TextEncodeRequest, pb.TextEncodeResponse),
    "sampling": (pb.SampleRequest, pb.SampleResponse),
    "decoding": (pb.DecodeRequest, pb.DecodeResponse),
    "edit": (pb.EditRequest, pb.EditResponse),
}


def fields(message: type[Message]) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.fields}


@pytest.mark.parametrize("service", sorted(PAIRS))
def test_messages_carry_exactly_the_rest_fields(service: str) -> None:
    """No request field is dropped on the way in, none invented (request_id rides beside)."""
    request, response = PAIRS[service]
    assert fields(request) - {"request_id"} == set(SERVICES[service].request_model.model_fields)
    assert fields(response) == set(SERVICES[service].response_model.model_fields)


def test_spec_encode_request_as_written(channel: grpc.Channel, server: LiveServer) -> None:
    stub = rpc.LatentEncoderStub(channel)
    out = server.data / "outputs" / "grpc"
    request = pb.EncodeRequest(
        image_path=str(server.data / "inputs/person.png"),
        vae_model_name="qwen_image_vae.safetensors",
        output_dir=str(out),
    )
    response, call = stub.EncodeImage.with_call(request, metadata=(("x-request-id", "grpc-enc-1"),))
    path = Path(response.latent_file_path)
    assert path.parent == out and "grpc-enc-1" in path.name
    latent = torch.load(path, weights_only=True)["latent"]
    assert list(response.latent_shape) == list(latent.shape) and len(latent.shape) == 5
    assert response.status == "success" and response.request_id == "grpc-enc-1"
    assert response.metadata["vae_model_name"] == "qwen_image_vae.safetensors"
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-enc-1"


def test_the_whole_split_pipeline_and_edit(channel: grpc.Channel, server: LiveServer) -> None:
    inputs = server.data / "inputs"
    latent = rpc.LatentEncoderStub(channel).EncodeImage(
        pb.EncodeRequest(image_path=str(inputs / "person.png"))
    )
    enc = rpc.TextEncoderStub(channel).EncodeText(
        pb.TextEncodeRequest(
            image1_path=str(inputs / "person.png"), image2_path=str(inputs / "cloth.png"), prompt="x"
        )
    )
    assert enc.positive_shape[0] == 1 and enc.negative_encoding_file
    spec = REQUESTS["sampling"]
    sampled = rpc.SamplerStub(channel).Sample(
        pb.SampleRequest(
            positive_encoding_file=enc.positive_encoding_file,
            negative_encoding_file=enc.negative_encoding_file,
            latent_file=latent.latent_file_path,
            unet_model_name=spec["unet_model_name"],
            lora_model_name=spec["lora_model_name"],
            sampling_params=pb.SamplingParams(**spec["sampling_params"]),
            model_transform_params=pb.ModelTransformParams(**spec["model_transform_params"]),
        )
    )
    meta = sampled.sampling_metadata
    assert meta["seed"] == 12345 and meta["steps"] == 4 and meta["lora_model_name"] == spec["lora_model_name"]
    assert list(sampled.sampled_latent_shape) == list(latent.latent_shape)
    decoded = rpc.DecoderStub(channel).Decode(
        pb.DecodeRequest(
            latent_file=sampled.sampled_latent_file, output_filename="test_male_1", output_format="png"
        )
    )
    assert Path(decoded.image_file_path).stat().st_size == decoded.file_size
    assert decoded.image_file_path.endswith(".png") and len(decoded.image_shape) == 3
    edited = rpc.EditorStub(channel).Edit(
        pb.EditRequest(
            image1_path=str(inputs / "person.png"),
            prompt="x",
            sampling_params=pb.SamplingParams(seed=3, steps=2),
            lora_model_name="",  # explicitly none
        )
    )
    assert edited.status == "success" and Path(edited.image_file_path).is_file()
    assert edited.metadata["sampling"]["lora_model_name"] is None


@pytest.mark.parametrize(
    ("request_", "status", "code"),
    [
        (
            pb.EncodeRequest(image_path="inputs/person.png", vae_model_name="nope"),
            "NOT_FOUND",
            "MODEL_NOT_FOUND",
        ),
        (pb.EncodeRequest(image_path="inputs/absent.png"), "NOT_FOUND", "IMAGE_NOT_FOUND"),
        (pb.EncodeRequest(image_path="/etc/passwd"), "PERMISSION_DENIED", "PERMISSION_DENIED"),
        (
            pb.EncodeRequest(image_path="inputs/person.png", output_dir="/tmp"),
            "PERMISSION_DENIED",
            "OUTPUT_DIR_NOT_WRITABLE",
        ),
        (
            pb.EncodeRequest(image_path="inputs/person.png", upscale_method="sinc"),
            "INVALID_ARGUMENT",
            "INVALID_INPUT",
        ),
        (
            pb.EncodeRequest(image_path="inputs/person.png", megapixels=-1),
            "INVALID_ARGUMENT",
            "INVALID_INPUT",
        ),
        (
            pb.EncodeRequest(image_path="inputs/person.png", request_id="a b"),
            "INVALID_ARGUMENT",
            "INVALID_INPUT",
        ),
    ],
)
def test_errors_are_status_codes_with_the_spec_code(
    channel: grpc.Channel, request_: pb.EncodeRequest, status: str, code: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        rpc.LatentEncoderStub(channel).EncodeImage(request_)
    assert info.value.code() == grpc.StatusCode[status]  # type: ignore[attr-defined]
    assert error_code(info.value) == code
    assert "Traceback" not in info.value.details()  # type: ignore[attr-defined]


def test_an_empty_prompt_is_a_prompt_and_a_missing_path_is_named(channel: grpc.Channel) -> None:
    # proto3 sends "" as nothing; a required field takes the wire's value, as REST takes "".
    stub = rpc.TextEncoderStub(channel)
    encoded = stub.EncodeText(pb.TextEncodeRequest(image1_path="inputs/person.png", prompt=""))
    assert encoded.status == "success" and Path(encoded.positive_encoding_file).is_file()
    with pytest.raises(grpc.RpcError) as info:
        stub.EncodeText(pb.TextEncodeRequest(prompt="x"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "image1_path" in info.value.details()  # type: ignore[attr-defined]


def test_bad_nested_field_is_named(channel: grpc.Channel) -> None:
    request = pb.SampleRequest(
        positive_encoding_file="a.pt",
        latent_file="b.pt",
        sampling_params=pb.SamplingParams(sampler_name="nope"),
    )
    with pytest.raises(grpc.RpcError) as info:
        rpc.SamplerStub(channel).Sample(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "sampling_params.sampler_name" in info.value.details()  # type: ignore[attr-defined]


def test_a_20_mb_request_passes_the_transport_and_an_over_limit_one_does_not(channel: grpc.Channel) -> None:
    stub = rpc.EditorStub(channel)
    big = pb.EditRequest(image1_path="inputs/person.png", prompt="x" * (20 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as info:
        stub.Edit(big)
    # Received whole: refused by validation, naming the field, not by the transport.
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt" in info.value.details()  # type: ignore[attr-defined]
    huge = pb.EditRequest(image1_path="inputs/person.png", prompt="x" * (101 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as info:
        stub.Edit(huge)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
