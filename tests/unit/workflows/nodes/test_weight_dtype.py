"""UNETLoader's ``weight_dtype``: honoured where genserve keeps the weights in fp8 e4m3fn (an
unscaled fp8 file under ``models.fp8_storage``), refused, naming the input, where it would have to
round other weights to fp8."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from genserve.app.runtime import Runtime, build_runtime
from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.pipeline import DEMO_TRANSFORMER
from genserve.models.demo.single_files import write_transformer_files
from genserve.workflows.nodes.base import NodeContext
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from tests.conftest import small_settings

FP8_FILE = "demo_fp8_e4m3fn.safetensors"


@pytest.fixture
def fp8_runtime(demo_models: Path, data_root: Path, tmp_path: Path) -> Iterator[Runtime]:
    """The demo transformer folder beside its unscaled fp8 single file, fp8 storage on."""
    models = tmp_path / "models"
    (models / "diffusion_models").mkdir(parents=True)
    folder = demo_models / "diffusion_models" / DEMO_TRANSFORMER
    (models / "diffusion_models" / DEMO_TRANSFORMER).symlink_to(folder)
    written = write_transformer_files(folder, tmp_path / "files")
    [fp8] = [f for f in written if f.name == FP8_FILE]
    fp8.rename(models / "diffusion_models" / FP8_FILE)
    with build_runtime(small_settings(models, data_root, GENSERVE_MODELS__FP8_STORAGE="on")) as rt:
        yield rt


def _load(runtime: Runtime, data_root: Path, unet_name: str, weight_dtype: str) -> object:
    registry = pipeline_registry(runtime.models.registry, data_root / "inputs")
    resources = PipelineResources.from_runtime(runtime, input_dir=data_root / "inputs")
    ctx = NodeContext("p", "1", "UNETLoader", resources=resources)
    inputs = {"unet_name": unet_name, "weight_dtype": weight_dtype}
    return registry["UNETLoader"].call(ctx, inputs).outputs[0]


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast"])
def test_fp8_is_honoured_where_the_weights_are_kept_in_fp8(
    fp8_runtime: Runtime, data_root: Path, weight_dtype: str
) -> None:
    model = _load(fp8_runtime, data_root, FP8_FILE, weight_dtype)
    assert model.unet_name == FP8_FILE  # type: ignore[attr-defined]
    [stats] = [s for s in fp8_runtime.models.loaded() if s.name == FP8_FILE]
    assert stats.fp8_stored


@pytest.mark.parametrize(
    ("unet_name", "weight_dtype"),
    [(DEMO_TRANSFORMER, "fp8_e4m3fn"), (DEMO_TRANSFORMER, "fp8_e4m3fn_fast"), (FP8_FILE, "fp8_e5m2")],
)
def test_fp8_that_would_round_the_weights_is_refused(
    fp8_runtime: Runtime, data_root: Path, unet_name: str, weight_dtype: str
) -> None:
    with pytest.raises(GenserveError) as info:
        _load(fp8_runtime, data_root, unet_name, weight_dtype)
    assert info.value.code is ErrorCode.INVALID_INPUT and info.value.details["field"] == "weight_dtype"
    assert weight_dtype in info.value.message and "default" in info.value.message
