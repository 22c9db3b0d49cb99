"""ComfyUI's int8 (convrot) single files load through ``load_single_file`` dequantised to the compute
dtype: the same weights within int8 rounding, the same layer outputs as ComfyUI's rotated matmul, the
rotation and quantiser of comfy_kitchen's reference, and every other quant format refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from genserve.errors import ErrorCode, GenserveError
from genserve.models.describe import describe
from genserve.models.formats import int8_convrot
from genserve.models.formats.int8_convrot import Int8Config
from genserve.models.formats.safetensors_header import read_header
from genserve.models.formats.sizes import loaded_bytes
from genserve.models.kinds import ModelEntry, ModelKind
from genserve.models.loaders.single_file import load_single_file

# Computed once by hand with comfy_kitchen 0.2.40's eager backend (_rotate_weight with
# _build_hadamard(16), and quantize_int8_convrot_weight(w, 64)) on the inputs built below.
KITCHEN_ROTATED_ROW0 = [
    2.2249999, 1.2249999, 0.0250001, -1.375, 4.2250004, 4.0250001, 3.6250002, 3.0250001,
    3.0250001, 3.6250002, 4.0250001, 4.2250004, -1.375, 0.0250001, 1.2249999, 2.2249999,
]  # fmt: skip
KITCHEN_ROTATED_ROW1_HEAD = [3.8249979, 6.0250025, 8.0249987, 9.8249998]
KITCHEN_Q_HEAD = [
    [127, 100, 86, 88, -8, 17, 49, 84],
    [-7, 22, 60, 102, -106, -78, -61, -55],
    [-127, -93, -71, -63, -17, -35, -63, -96],
]
KITCHEN_Q_ROW_SUMS = [274, 240, -211]
KITCHEN_SCALES = [0.010474702343344688, 0.021203530952334404, 0.03174608573317528]


class Toy(nn.Module):
    """Quantised layers of several group sizes, an int8 embedding table, and plain layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 256)
        self.up = nn.Linear(256, 96)  # group 256
        self.down = nn.Linear(96, 32)  # 96 takes group 16 (the largest power of 4 dividing it)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 8)  # left in float


QUANTISED = ["embed.weight", "up.weight", "down.weight"]


def toy_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = Toy()
    with torch.no_grad():
        model.up.weight[3, 17] = 0.9  # an outlier, what the rotation spreads
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def load(path: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    return load_single_file(Toy, read_header(path), torch.device("cpu"), dtype, lambda key: key, "model_name")


def refusal(path: Path) -> str:
    with pytest.raises(GenserveError) as info:
        load(path)
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND
    assert info.value.details["field"] == "model_name"
    assert path.name in info.value.message and str(path.parent) not in info.value.message
    return info.value.message


def marker(conf: dict[str, object]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


def test_the_rotation_is_comfy_kitchens() -> None:
    x = (torch.arange(32, dtype=torch.float32).reshape(2, 16) - 7.5) ** 2 / 10
    rotated = int8_convrot.rotate(x, 16)
    assert torch.allclose(rotated[0], torch.tensor(KITCHEN_ROTATED_ROW0), atol=1e-5)
    assert torch.allclose(rotated[1, :4], torch.tensor(KITCHEN_ROTATED_ROW1_HEAD), atol=1e-5)
    for size in (4, 16, 64, 256):
        signs = int8_convrot.hadamard_signs(size)
        assert torch.equal(signs, signs.T) and torch.equal(signs @ signs.T, size * torch.eye(size))
        y = torch.randn(3, 2 * size, dtype=torch.float64)
        assert torch.allclose(int8_convrot.rotate(int8_convrot.rotate(y, size), size), y)  # self-inverse
    with pytest.raises(ValueError, match="power of 4"):
        int8_convrot.rotate(torch.zeros(2, 32), 32)


def test_the_quantiser_is_comfy_kitchens() -> None:
    w = torch.sin(torch.arange(3 * 64, dtype=torch.float32).reshape(3, 64) * 0.37)
    w = w * (1 + torch.arange(3, dtype=torch.float32))[:, None]
    q, scale = int8_convrot.quantize(w, Int8Config(True, 64))
    assert q.dtype is torch.int8 and scale.dtype is torch.float32 and scale.shape == (3, 1)
    assert q[:, :8].tolist() == KITCHEN_Q_HEAD
    assert q.sum(dim=1).tolist() == KITCHEN_Q_ROW_SUMS
    assert torch.allclose(scale.flatten(), torch.tensor(KITCHEN_SCALES), rtol=1e-6)
    back = int8_convrot.dequantize(q, scale, Int8Config(True, 64), torch.float32)
    assert (back - w).abs().max() <= scale.max() * 8 / 2  # sqrt(64) half-steps at worst


def test_the_file_holds_comfyuis_layout(tmp_path: Path) -> None:
    state = int8_convrot.quantize_state_dict(toy_state(), QUANTISED)
    assert state["up.weight"].dtype is torch.int8 and state["up.weight"].shape == (96, 256)
    assert state["up.weight_scale"].dtype is torch.float32 and state["up.weight_scale"].shape == (96, 1)
    raw = bytes(state["up.comfy_quant"].tolist())
    assert raw == b'{"format": "int8_tensorwise", "convrot": true, "convrot_groupsize": 256}'
    assert json.loads(bytes(state["down.comfy_quant"].tolist()))["convrot_groupsize"] == 16
    assert state["head.weight"].dtype is torch.float32 and "head.comfy_quant" not in state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_quantised_file_loads_as_the_original_model(tmp_path: Path, dtype: torch.dtype) -> None:
    original = toy_state()
    quantised = int8_convrot.quantize_state_dict(original, QUANTISED)
    save_file(quantised, str(tmp_path / "toy_int8_convrot.safetensors"))
    model = load(tmp_path / "toy_int8_convrot.safetensors", dtype)
    loaded = model.state_dict()
    assert set(loaded) == set(original)  # no scale or marker in the module
    assert all(value.dtype is dtype and value.device.type == "cpu" for value in loaded.values())
    assert torch.equal(loaded["head.weight"], original["head.weight"].to(dtype))  # the plain layer as is
    for key in QUANTISED:
        error = (loaded[key].float() - original[key]).norm() / original[key].norm()
        assert error < 0.02, (key, error)
    if dtype is not torch.float32:
        return
    # What ComfyUI's kernel computes, the activations rotated and the rotated int8 weights scaled
    # (before it rounds the activations to int8), equals the plain Linear on the loaded weights.
    x = torch.randn(5, 256)
    q, scale = quantised["up.weight"].float(), quantised["up.weight_scale"]
    comfy = int8_convrot.rotate(x, 256) @ (q * scale).T + original["up.bias"]
    assert torch.allclose(model.up(x), comfy, atol=1e-5)
    assert torch.allclose(
        model.up(x), nn.functional.linear(x, original["up.weight"], original["up.bias"]), atol=0.05
    )


def test_plain_int8_tensorwise_and_metadata_configs_load(tmp_path: Path) -> None:
    original = toy_state(1)
    state = int8_convrot.quantize_state_dict(original, ["up.weight"], Int8Config(convrot=False))
    assert state["up.weight_scale"].numel() == 1
    assert json.loads(bytes(state["up.comfy_quant"].tolist())) == {"format": "int8_tensorwise"}
    # The configs in the file's _quantization_metadata instead of per-layer markers.
    state = int8_convrot.quantize_state_dict(state, ["down.weight"])
    layers = {
        "up": {"format": "int8_tensorwise"},
        "down": json.loads(bytes(state["down.comfy_quant"].tolist())),
    }
    state = {key: value for key, value in state.items() if not key.endswith(".comfy_quant")}
    path = tmp_path / "metadata.safetensors"
    save_file(state, str(path), metadata={"_quantization_metadata": json.dumps({"layers": layers})})
    loaded = load(path).state_dict()
    step = state["up.weight_scale"]  # plain int8: each value within half a step of the original
    assert (loaded["up.weight"] - original["up.weight"]).abs().max() <= step / 2 * (1 + 1e-5)
    down = original["down.weight"]
    assert (loaded["down.weight"] - down).norm() / down.norm() < 0.02


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8", "convrot_w4a4", "asym_w4a8_int8", "awq_w4a16"])
def test_other_quant_formats_are_refused_by_name(tmp_path: Path, fmt: str) -> None:
    state = int8_convrot.quantize_state_dict(toy_state(), ["up.weight"])
    state["down.weight"] = torch.zeros(32, 48, dtype=torch.int8 if fmt != "nvfp4" else torch.uint8)
    state["down.weight_scale"] = torch.ones(32, 3)
    state["down.comfy_quant"] = marker({"format": fmt, "group_size": 16})
    path = tmp_path / f"toy_{fmt}.safetensors"
    save_file(state, str(path))
    message = refusal(path)
    assert f"down is in ComfyUI's '{fmt}' quantisation format" in message and "does not load" in message
    entry = ModelEntry(ModelKind.DIFFUSION, path.name, path)
    assert describe(entry)[0] == f"safetensors file of another model, {fmt}: not loadable"


def test_int8_without_its_config_or_scale_is_refused(tmp_path: Path) -> None:
    state = int8_convrot.quantize_state_dict(toy_state(), QUANTISED)
    no_scale = {key: value for key, value in state.items() if key != "up.weight_scale"}
    save_file(no_scale, str(tmp_path / "no_scale.safetensors"))
    assert "up.weight is int8 without its scale (up.weight_scale is missing)" in refusal(
        tmp_path / "no_scale.safetensors"
    )
    no_marker = {key: value for key, value in state.items() if key != "down.comfy_quant"}
    save_file(no_marker, str(tmp_path / "no_marker.safetensors"))
    assert "down.weight is stored as int8 with no comfy_quant config" in refusal(
        tmp_path / "no_marker.safetensors"
    )
    bad_group = dict(
        state,
        **{"up.comfy_quant": marker({"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 32})},
    )
    save_file(bad_group, str(tmp_path / "bad_group.safetensors"))
    assert "convrot group size 32, not a power of 4" in refusal(tmp_path / "bad_group.safetensors")
    not_json = dict(state, **{"up.comfy_quant": torch.tensor(list(b"\xffnot json"), dtype=torch.uint8)})
    save_file(not_json, str(tmp_path / "not_json.safetensors"))
    assert "up.comfy_quant is not a JSON object" in refusal(tmp_path / "not_json.safetensors")


def test_listing_and_size_estimate(tmp_path: Path) -> None:
    original = toy_state()
    path = tmp_path / "toy_int8_convrot.safetensors"
    save_file(int8_convrot.quantize_state_dict(original, QUANTISED), str(path))
    entry = ModelEntry(ModelKind.DIFFUSION, path.name, path)
    assert describe(entry) == ("safetensors file of another model, int8 convrot", "I8")
    # Loaded in bf16: every weight at 2 bytes, the scales and markers not at all.
    assert loaded_bytes(entry, torch.bfloat16) == 2 * sum(value.numel() for value in original.values())
    assert int8_convrot.scan(read_header(path)).formats == {"int8_tensorwise": 3}


def test_a_file_mixing_int8_fp8_and_plain_layers_loads(tmp_path: Path) -> None:
    original = toy_state(2)
    state = int8_convrot.quantize_state_dict(original, ["up.weight", "down.weight"])
    head = original["head.weight"]
    scale = head.abs().amax(dim=1) / 448.0
    state["head.weight"] = (head / scale[:, None]).to(torch.float8_e4m3fn)
    state["head.weight_scale"] = scale
    state["head.comfy_quant"] = marker({"format": "float8_e4m3fn"})
    path = tmp_path / "mixed.safetensors"
    save_file(state, str(path))
    loaded = load(path).state_dict()
    assert torch.equal(loaded["embed.weight"], original["embed.weight"])  # the plain table as is
    for key in ("up.weight", "down.weight", "head.weight"):
        assert (loaded[key] - original[key]).norm() / original[key].norm() < 0.05, key
    entry = ModelEntry(ModelKind.DIFFUSION, path.name, path)
    assert describe(entry)[0] == "safetensors file of another model, fp8 scaled, int8 convrot"
