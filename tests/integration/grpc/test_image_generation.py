"""drawthings.ImageGenerationService: Echo, FilesExist with path tricks, UploadFile (atomic, with
a size limit and name checks), health and reflection on the same server."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from genserve.api.grpc.gen import image_generation_pb2 as pb
from genserve.api.grpc.gen import image_generation_pb2_grpc as rpc
from tests.integration.conftest import LiveServer, wait_for
from tests.integration.grpc.conftest import error_code


def test_echo_says_hello(channel: grpc.Channel) -> None:
    assert rpc.ImageGenerationServiceStub(channel).Echo(pb.EchoRequest()).message == "HELLO"


def test_files_exist_answers_each_name_and_refuses_tricks_without_failing(channel: grpc.Channel) -> None:
    names = [
        "vae/qwen_image_vae",
        "qwen_image_vae",
        "Qwen-Image-Lightning-4steps-V2.0.safetensors",
        "vae/qwen_image_vae.safetensors",  # the config's default name: it loads the folder
        "loras/absent.safetensors",
        "../secrets.txt",
        "/etc/passwd",
        "vae/../../etc/passwd",
        "gpus/x.bin",
    ]
    answer = rpc.ImageGenerationServiceStub(channel).FilesExist(pb.FilesExistRequest(files=names))
    assert list(answer.files) == names
    assert list(answer.exists) == [True, True, True, True, False, False, False, False, False]
    assert len(answer.errors) == 4
    for bad, error in zip(names[5:], answer.errors, strict=True):
        assert error.startswith(bad)


def chunks(name: str, data: bytes, size: int = 64 * 1024) -> Iterator[pb.UploadFileRequest]:
    yield pb.UploadFileRequest(filename=name, data=data[:size])
    for start in range(size, len(data), size):
        yield pb.UploadFileRequest(data=data[start : start + size])


def leftovers(server: LiveServer) -> list[str]:
    return [p.name for p in server.runtime.models.registry.root.rglob(".upload-*")]


def test_upload_writes_the_whole_file_atomically(channel: grpc.Channel, server: LiveServer) -> None:
    data = bytes(range(256)) * 2000  # 512,000 bytes in 8 chunks
    answer = rpc.ImageGenerationServiceStub(channel).UploadFile(chunks("loras/uploaded.safetensors", data))
    target = server.runtime.models.registry.root / "loras" / "uploaded.safetensors"
    assert "uploaded loras/uploaded.safetensors (512000 bytes)" in answer.message
    assert target.read_bytes() == data and leftovers(server) == []
    with pytest.raises(grpc.RpcError) as info:  # no silent overwrite
        rpc.ImageGenerationServiceStub(channel).UploadFile(chunks("loras/uploaded.safetensors", b"x"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS and error_code(info.value) == "ALREADY_EXISTS"  # type: ignore[attr-defined]
    assert target.read_bytes() == data


def test_an_upload_may_not_shadow_the_model_folder_a_name_stands_for(
    channel: grpc.Channel, server: LiveServer
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        rpc.ImageGenerationServiceStub(channel).UploadFile(chunks("vae/qwen_image_vae.safetensors", b"x"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]
    assert "as the folder vae/qwen_image_vae/" in info.value.details()  # type: ignore[attr-defined]
    assert not (server.runtime.models.registry.root / "vae" / "qwen_image_vae.safetensors").exists()
    assert leftovers(server) == []


def test_a_broken_stream_leaves_no_file(channel: grpc.Channel, server: LiveServer) -> None:
    def broken() -> Iterator[pb.UploadFileRequest]:
        yield pb.UploadFileRequest(filename="loras/broken.safetensors", data=b"a" * 1000)
        raise RuntimeError("the client died")

    with pytest.raises(grpc.RpcError):
        rpc.ImageGenerationServiceStub(channel).UploadFile(broken())
    target = server.runtime.models.registry.root / "loras" / "broken.safetensors"
    # The server may see the stream end before it learns of the cancellation; a commit made in
    # that moment is taken back when the call ends cancelled.
    wait_for(lambda: leftovers(server) == [] and not target.exists(), 5, "the partial upload to be removed")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../escape.safetensors", "unknown model kind"),
        ("vae/../../escape.safetensors", "<kind>/<file name>"),
        ("gpus/x.safetensors", "unknown model kind"),
        ("loras/.hidden", "plain file name"),
        ("x.safetensors", "<kind>/<file name>"),
    ],
)
def test_upload_refuses_bad_names(channel: grpc.Channel, server: LiveServer, name: str, words: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        rpc.ImageGenerationServiceStub(channel).UploadFile(chunks(name, b"data"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in info.value.details()  # type: ignore[attr-defined]
    assert leftovers(server) == []


def test_upload_over_the_size_limit_is_refused_and_removed(channel: grpc.Channel, server: LiveServer) -> None:
    data = b"z" * (1024 * 1024 + 1)  # the fixture's limit is 1 MiB
    with pytest.raises(grpc.RpcError) as info:
        rpc.ImageGenerationServiceStub(channel).UploadFile(chunks("loras/big.safetensors", data))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "upload_max_mb" in info.value.details()  # type: ignore[attr-defined]
    assert not (server.runtime.models.registry.root / "loras" / "big.safetensors").exists()
    assert leftovers(server) == []


def test_health_overall_and_per_service(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", "LatentEncoder", "Decoder", "Editor", "drawthings.ImageGenerationService"):
        status = stub.Check(health_pb2.HealthCheckRequest(service=name)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="NoSuchService"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_reflection_lists_every_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(iter(stub.ServerReflectionInfo(iter([request]))))
    names = {s.name for s in answer.list_services_response.service}
    assert names >= {
        "LatentEncoder",
        "TextEncoder",
        "Sampler",
        "Decoder",
        "Editor",
        "drawthings.ImageGenerationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    symbol = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="drawthings.ImageGenerationService"
    )
    found = next(iter(stub.ServerReflectionInfo(iter([symbol]))))
    assert found.file_descriptor_response.file_descriptor_proto
