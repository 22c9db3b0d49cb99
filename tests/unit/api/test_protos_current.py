"""The checked-in generated gRPC code matches protos/ (run `make protos` after editing a proto)."""

from __future__ import annotations

from pathlib import Path

from genserve.api.grpc import codegen


def test_generated_code_is_current(tmp_path: Path) -> None:
    fresh = codegen.generate(tmp_path)
    checked_in = codegen.REPO / "src" / codegen.PACKAGE_PATH
    assert [p.name for p in fresh] == sorted(
        p.name for p in checked_in.iterdir() if p.suffix in (".py", ".pyi") and p.name != "__init__.py"
    )
    for path in fresh:
        stale = (checked_in / path.name).read_text() != path.read_text()
        assert not stale, f"{path.name} is stale: run `make protos`"


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
