"""The checked-in generated gRPC code is what the locked grpcio-tools makes from protos/ (run
`make protos` after editing a proto)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from genserve.api.grpc import codegen
from tests.unit.test_lock import locked


def test_the_generator_is_the_locked_one() -> None:
    """An upstream grpcio-tools release cannot flip the staleness check: the generator is pinned,
    and a venv with another one is named here rather than reported as stale protos."""
    assert metadata.version("grpcio-tools") == str(locked()["grpcio-tools"]), "run `make setup`"


def test_generated_code_is_current(tmp_path: Path) -> None:
    fresh = codegen.generate(tmp_path)
    checked_in = codegen.REPO / "src" / codegen.PACKAGE_PATH
    assert [p.name for p in fresh] == sorted(
        p.name for p in checked_in.iterdir() if p.suffix in (".py", ".pyi") and p.name != "__init__.py"
    )
    for path in fresh:
        stale = (checked_in / path.name).read_text() != path.read_text()
        assert not stale, f"{path.name} is stale: run `make protos`"


def test_a_changed_proto_is_caught(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The check above can fail: a proto edited without `make protos` generates other code."""
    protos = tmp_path / "protos"
    protos.mkdir()
    for name in codegen.FILES:
        (protos / name).write_text((codegen.PROTOS / name).read_text())
    edited = protos / "image_generation.proto"
    edited.write_text(
        edited.read_text().replace("message EchoRequest {", "message EchoRequest {\n  int32 x = 99;")
    )
    monkeypatch.setattr(codegen, "PROTOS", protos)
    fresh = {p.name: p.read_text() for p in codegen.generate(tmp_path / "out")}
    checked_in = codegen.REPO / "src" / codegen.PACKAGE_PATH
    assert fresh["image_generation_pb2.py"] != (checked_in / "image_generation_pb2.py").read_text()
    assert fresh["pipeline_pb2.py"] == (checked_in / "pipeline_pb2.py").read_text()


def test_pipeline_proto_keeps_the_spec_shape() -> None:
    """No package line, and LatentEncoder.EncodeImage's first fields numbered as the spec has them."""
    text = (codegen.PROTOS / "pipeline.proto").read_text()
    assert "\npackage " not in text
    from genserve.api.grpc.gen import pipeline_pb2 as pb

    request = {f.name: f.number for f in pb.EncodeRequest.DESCRIPTOR.fields}
    response = {f.name: f.number for f in pb.EncodeResponse.DESCRIPTOR.fields}
    assert request | {"image_path": 1, "vae_model_name": 2, "output_dir": 3} == request
    assert response | {"latent_file_path": 1, "latent_shape": 2} == response
    assert pb.DESCRIPTOR.services_by_name["LatentEncoder"].full_name == "LatentEncoder"
