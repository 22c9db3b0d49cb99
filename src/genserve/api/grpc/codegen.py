"""Generates the Python code for the protos in ``protos/`` (``make protos``).

The protos are compiled under the virtual path ``genserve/api/grpc/gen/``, so the generated
modules import each other as ``genserve.api.grpc.gen.*`` while the protos themselves keep the
spec's package lines (none for the pipeline, ``drawthings`` for image generation,
``monolithic`` for lip-sync, ``titancompute.v1`` for the LLM cluster). The output is
checked in; a test regenerates it and fails when the checked-in copy is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
PROTOS = REPO / "protos"
PACKAGE_PATH = "genserve/api/grpc/gen"
FILES = ("pipeline.proto", "image_generation.proto", "monolithic.proto", "titancompute.proto")


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under ``out_root/genserve/api/grpc/gen``; returns them."""
    from grpc_tools import protoc  # a dev dependency: only generating needs it

    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE_PATH}={PROTOS}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{PACKAGE_PATH}/{name}" for name in FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    folder = out_root / PACKAGE_PATH
    return sorted(p for p in folder.iterdir() if p.suffix in (".py", ".pyi") and p.name != "__init__.py")


if __name__ == "__main__":
    written = generate(REPO / "src")
    for path in written:
        print(path.relative_to(REPO))
    sys.exit(0)
