"""Random bytes on every method the gRPC door serves: INVALID_ARGUMENT with a plain message, never
UNKNOWN or INTERNAL naming protobuf's internals, and the server answers well-formed calls after."""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2  # noqa: F401  (registers the reflection service)

from genserve.api.grpc.gen import image_generation_pb2, monolithic_pb2, pipeline_pb2  # noqa: F401
from genserve.models.registry import ModelKind
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root
from tests.integration.grpc.conftest import open_channel

# Words that only protobuf's or grpc's own errors use, and what a path looks like.
INTERNALS = re.compile(r"protobuf|DecodeError|Wire format|Error parsing|Unexpected <class|Traceback|\.py\b")
PATH = re.compile(r"(/work|/tmp|/home|/root|/usr)/")
# Never valid protobuf: field 1 with the reserved wire type 7; a varint of 11 bytes; a length past
# the end; field number 0; invalid UTF-8 in field 1 (a string in most requests, bytes in a few).
FIXED = [b"\x0f", b"\x08" + b"\xff" * 10 + b"\x01", b"\x0a\x7f" + b"abc", b"\x00\x01", b"\x0a\x02\xff\xfe"]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[LiveServer]:
    """Every door's service served, on its own copy of the models (UploadFile writes there)."""
    root = tmp_path_factory.mktemp("fuzz")
    models = root / "models"
    shutil.copytree(demo_models, models)
    data = make_data_root(root / "data", demo_images)
    settings = small_settings(models, data)
    with live_server(settings, data, grpc=True) as live:
        yield live


@pytest.fixture(scope="module")
def channel(server: LiveServer) -> Iterator[grpc.Channel]:
    with open_channel(server.grpc_target) as ch:
        yield ch


def served_methods(server: LiveServer) -> list[MethodDescriptor]:
    """Every method of every service the door serves, health and reflection included."""
    pool = descriptor_pool.Default()
    names = [
        *server.server.grpc.service_names,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    methods = [m for name in names for m in pool.FindServiceByName(name).methods]
    assert len(methods) >= 19, [m.full_name for m in methods]
    return methods


def undecodable(method: MethodDescriptor, count: int, seed: int) -> list[bytes]:
    """``count`` random byte strings the method's request type cannot parse, plus the fixed ones."""
    request_type = GetMessageClass(method.input_type)
    rng = random.Random(seed)
    found: list[bytes] = []
    for candidate in FIXED:
        if not parses(request_type, candidate):
            found.append(candidate)
    while len(found) < len(FIXED) + count:
        candidate = rng.randbytes(rng.randint(1, 256))
        if not parses(request_type, candidate):
            found.append(candidate)
    return found


def parses(request_type: type, data: bytes) -> bool:
    try:
        request_type.FromString(data)
    except DecodeError:
        return False
    return True


def call(channel: grpc.Channel, method: MethodDescriptor, payload: bytes) -> grpc.RpcError | None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    sends, answers = ("stream" if m else "unary" for m in (method.client_streaming, method.server_streaming))
    kind = f"{sends}_{answers}"
    stub = getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)
    request = iter([payload]) if method.client_streaming else payload
    try:
        answer = stub(request, timeout=30)
        if method.server_streaming:
            list(answer)
    except grpc.RpcError as error:
        return error
    return None


def test_every_method_answers_random_bytes_with_invalid_argument(
    server: LiveServer, channel: grpc.Channel
) -> None:
    problems = []
    for index, method in enumerate(served_methods(server)):
        for payload in undecodable(method, 6, seed=index):
            error = call(channel, method, payload)
            if error is None:
                problems.append(f"{method.full_name}: {payload!r} answered OK")
                continue
            code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
            if (
                code is not grpc.StatusCode.INVALID_ARGUMENT
                or INTERNALS.search(details)
                or PATH.search(details)
            ):
                problems.append(f"{method.full_name}: {code.name} {details[:160]!r}")
    assert not problems, "\n".join(problems)


def test_a_bad_message_in_the_middle_of_a_stream_stops_it_with_invalid_argument(
    server: LiveServer, channel: grpc.Channel
) -> None:
    first = image_generation_pb2.UploadFileRequest(filename="loras/fuzz.safetensors", data=b"a" * 100)
    stub = channel.stream_unary(
        "/drawthings.ImageGenerationService/UploadFile", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub(iter([first.SerializeToString(), b"\x0f", first.SerializeToString()]), timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert not INTERNALS.search(caught.value.details() or "")  # type: ignore[attr-defined]
    loras = server.runtime.models.registry.folder(ModelKind.LORA)
    assert not list(loras.glob("*fuzz*")), "the upload was stopped: nothing of it is kept"


def test_the_server_still_answers_after_the_fuzzing(channel: grpc.Channel) -> None:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    echo = channel.unary_unary(
        "/drawthings.ImageGenerationService/Echo",
        request_serializer=image_generation_pb2.EchoRequest.SerializeToString,
        response_deserializer=image_generation_pb2.EchoResponse.FromString,
    )
    assert echo(image_generation_pb2.EchoRequest(), timeout=10).message == "HELLO"
