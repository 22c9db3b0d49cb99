"""UNETLoader's ``weight_dtype``: the model as it is where genserve already keeps the file's exact
fp8 weights (an unscaled fp8 file under ``models.fp8_storage``); elsewhere a copy of its own with
the weights rounded to the fp8 type asked for, as ComfyUI does, leaving the model itself as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from genserve.app.runtime import Runtime, build_runtime
from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.pipeline import DEMO_TRANSFORMER
from genserve.models.demo.single_files import write_transformer_files
from genserve.models.registry import ModelKind
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
    ("unet_name", "weight_dtype", "suffix", "storage"),
    [
        (DEMO_TRANSFORMER, "fp8_e4m3fn", "#fp8_e4m3fn", torch.float8_e4m3fn),
        (DEMO_TRANSFORMER, "fp8_e4m3fn_fast", "#fp8_e4m3fn", torch.float8_e4m3fn),
        (FP8_FILE, "fp8_e5m2", "#fp8_e5m2", torch.float8_e5m2),
    ],
)
def test_fp8_that_rounds_the_weights_is_a_copy_of_its_own(
    fp8_runtime: Runtime,
    data_root: Path,
    unet_name: str,
    weight_dtype: str,
    suffix: str,
    storage: torch.dtype,
) -> None:
    model = _load(fp8_runtime, data_root, unet_name, weight_dtype)
    copy = unet_name + suffix
    assert model.unet_name == copy  # type: ignore[attr-defined]
    stats = {s.name: s for s in fp8_runtime.models.loaded()}
    assert stats[copy].fp8_stored
    assert stats[copy].memory_bytes < stats[unet_name].memory_bytes or unet_name == FP8_FILE
    with fp8_runtime.models.use(ModelKind.DIFFUSION, copy) as rounded:
        block = rounded.transformer.transformer_blocks[0].attn.to_q
        assert block.weight.dtype == storage
        rounded_values = block.weight.float()
    with fp8_runtime.models.use(ModelKind.DIFFUSION, unet_name) as original:
        values = original.transformer.transformer_blocks[0].attn.to_q.weight.float()
    assert not torch.equal(rounded_values, values)  # rounded: not the original weights
    assert torch.allclose(rounded_values, values, rtol=0.15, atol=1e-3)


def test_a_copy_names_one_of_the_fp8_types(fp8_runtime: Runtime) -> None:
    with pytest.raises(GenserveError) as info:
        fp8_runtime.models.registry.resolve(ModelKind.DIFFUSION, f"{FP8_FILE}#int3", "unet_name")
    assert info.value.code is ErrorCode.INVALID_INPUT and "fp8_e4m3fn" in info.value.message
