"""One LoRA written in any key layout gives the diffusers-layout file's output, at any strength.

Real Qwen-Image LoRAs come as Lightning, ComfyUI, kohya, peft and diffusers files; a layout read
wrongly often fails silently (peft loads nothing, or ignores alpha), so each is checked on the
transformer's output rather than on its keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.lora_files import write_lora_layouts
from genserve.models.demo.pipeline import DEMO_LORA, DEMO_TRANSFORMER
from genserve.models.kinds import ModelEntry, ModelKind
from genserve.models.loaders.lora import LoraWeights, load_lora
from genserve.models.loaders.transformer import DiffusionModel, load_transformer

CPU = torch.device("cpu")
STRENGTHS = (0.3, 1.0, -1.0)
FILE_LAYOUTS = ("Lightning", "ComfyUI", "kohya", "peft")
# AdapterGate keeps every LoRA it has loaded as one more adapter on the shared transformer.
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


def _load(path: Path) -> LoraWeights:
    return load_lora(ModelEntry(ModelKind.LORA, path.name, path), CPU, torch.float32).model


@pytest.fixture(scope="module")
def model(demo_models: Path) -> DiffusionModel:
    folder = demo_models / "diffusion_models" / DEMO_TRANSFORMER
    return load_transformer(
        ModelEntry(ModelKind.DIFFUSION, DEMO_TRANSFORMER, folder), CPU, torch.float32
    ).model


@pytest.fixture(scope="module")
def inputs() -> dict:
    generator = torch.Generator().manual_seed(7)
    return {
        "hidden_states": torch.randn(1, 16, 64, generator=generator),
        "timestep": torch.tensor([0.6]),
        "encoder_hidden_states": torch.randn(1, 8, 128, generator=generator),
        "encoder_hidden_states_mask": None,
        "img_shapes": [[(1, 4, 4)]],
    }


def _output(model: DiffusionModel, inputs: dict, lora: LoraWeights | None, strength: float) -> torch.Tensor:
    with torch.no_grad(), model.gate.applied(lora, strength):
        return model.transformer(**inputs, return_dict=False)[0]


@pytest.fixture(scope="module")
def full_reference(model: DiffusionModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-2 diffusers-layout LoRA on every Linear of the transformer (the demo LoRA covers only
    attention; kohya's flat names for img_mlp.net.0.proj, to_out.0 or norm_out.linear need checking)."""
    generator = torch.Generator().manual_seed(11)
    tensors = {}
    for name, module in model.transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora" not in name and "base_layer" not in name:
            down = torch.randn(2, module.in_features, generator=generator) * 0.05
            tensors[f"transformer.{name}.lora_A.weight"] = down
            tensors[f"transformer.{name}.lora_B.weight"] = (
                torch.randn(module.out_features, 2, generator=generator) * 0.05
            )
    path = tmp_path_factory.mktemp("full") / "full_reference.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("which", ["demo", "full"])
def test_every_layout_matches_the_diffusers_file(
    which: str, demo_models: Path, full_reference: Path, model: DiffusionModel, inputs: dict, tmp_path: Path
) -> None:
    reference = demo_models / "loras" / DEMO_LORA if which == "demo" else full_reference
    expected_lora = _load(reference)
    assert expected_lora.layout == "diffusers" and expected_lora.metadata is None
    base = _output(model, inputs, None, 1.0)
    expected = {s: _output(model, inputs, expected_lora, s) for s in STRENGTHS}
    assert (expected[1.0] - base).abs().max() > 1e-3  # the LoRA changes the output: the test can fail
    paths = write_lora_layouts(tmp_path / which, reference) + _variants(tmp_path / which, reference)
    assert [p.name for p in paths[:4]] == [f"demo_{n.lower()}.safetensors" for n in FILE_LAYOUTS]
    for path in paths:
        lora = _load(path)
        for strength in STRENGTHS:
            got = _output(model, inputs, lora, strength)
            torch.testing.assert_close(
                got, expected[strength], atol=1e-5, rtol=1e-5, msg=f"{path.name} at {strength}"
            )
    assert [_load(p).layout for p in paths[:4]] == list(FILE_LAYOUTS)


def _variants(folder: Path, reference: Path) -> list[Path]:
    """The layouts diffusers' own loading reads wrongly: bare keys without alpha, peft without the
    adapter infix, diffusers keys with alpha keys or with the adapter config in the metadata."""
    tensors = load_file(str(reference))
    modules = [
        k.removeprefix("transformer.").removesuffix(".lora_A.weight") for k in tensors if ".lora_A." in k
    ]

    def pair(module: str) -> tuple[torch.Tensor, torch.Tensor]:
        return tensors[f"transformer.{module}.lora_A.weight"], tensors[f"transformer.{module}.lora_B.weight"]

    variants: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]] = {
        "bare_down_up": ({}, {}),
        "bare_a_b": ({}, {}),
        "peft_plain": ({}, {}),
        "comfyui_down_alpha": ({}, {}),
        "diffusers_alpha": ({}, {}),
        "diffusers_config": ({}, {"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 1.0})}),
    }
    for m in modules:
        down, up = pair(m)
        variants["bare_down_up"][0].update({f"{m}.lora_down.weight": down, f"{m}.lora_up.weight": up})
        variants["bare_a_b"][0].update({f"{m}.lora_A.weight": down, f"{m}.lora_B.weight": up})
        variants["peft_plain"][0].update(
            {f"base_model.model.{m}.lora_A.weight": down, f"base_model.model.{m}.lora_B.weight": up}
        )
        variants["comfyui_down_alpha"][0].update(
            {
                f"diffusion_model.{m}.lora_down.weight": down,
                f"diffusion_model.{m}.lora_up.weight": up * down.shape[0] / 3.0,
                f"diffusion_model.{m}.alpha": torch.tensor(3.0, dtype=torch.bfloat16),
            }
        )
        variants["diffusers_alpha"][0].update(
            {
                f"transformer.{m}.lora_A.weight": down,
                f"transformer.{m}.lora_B.weight": up * down.shape[0] / 0.5,
                f"transformer.{m}.alpha": torch.tensor(0.5),
            }
        )
        variants["diffusers_config"][0].update(
            {
                f"transformer.{m}.lora_A.weight": down,
                f"transformer.{m}.lora_B.weight": up * down.shape[0] / 1.0,
            }
        )
    paths = []
    for name, (state, metadata) in variants.items():
        path = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata or None)
        paths.append(path)
    return paths


def _lightning_pair() -> dict[str, torch.Tensor]:
    module = "transformer_blocks.0.attn.to_q"
    return {f"{module}.lora_down.weight": torch.ones(4, 128), f"{module}.lora_up.weight": torch.ones(128, 4)}


REFUSALS = {
    "no tensors": ({}, "holds no LoRA weights", []),
    "a transformer, not a LoRA": (
        {"img_in.weight": torch.ones(2, 2)},
        "holds no LoRA weights",
        ["img_in.weight"],
    ),
    "a key of no layout": (
        {**_lightning_pair(), "lora_te1_text_model_encoder.lora_down.weight": torch.ones(4, 8)},
        "match no Qwen-Image LoRA layout",
        ["lora_te1_text_model_encoder.lora_down.weight"],
    ),
    "another model's LoRA": (
        {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 8)},
        "match no Qwen-Image LoRA layout",
        ["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"],
    ),
    "a DoRA": (
        {**_lightning_pair(), "transformer_blocks.0.attn.to_q.dora_scale": torch.ones(1, 128)},
        "match no Qwen-Image LoRA layout",
        ["transformer_blocks.0.attn.to_q.dora_scale"],
    ),
    "a down without its up": (
        {"diffusion_model.transformer_blocks.0.attn.to_k.lora_down.weight": torch.ones(4, 128)},
        "without their down/up pair",
        ["diffusion_model.transformer_blocks.0.attn.to_k.lora_down.weight"],
    ),
    "ranks that disagree": (
        {
            "lora_unet_img_in.lora_down.weight": torch.ones(4, 64),
            "lora_unet_img_in.lora_up.weight": torch.ones(128, 2),
        },
        "ranks do not agree",
        ["lora_unet_img_in.lora_down.weight"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_file_that_is_no_qwen_lora_is_refused_by_name(case: str, tmp_path: Path) -> None:
    tensors, why, keys = REFUSALS[case]
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(GenserveError) as err:
        _load(path)
    _check_refusal(err.value, tmp_path, why, keys)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\xff" * 64])
def test_an_unreadable_file_is_refused_by_name(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(GenserveError) as err:
        _load(path)
    _check_refusal(err.value, tmp_path, "is not a readable LoRA file", [])


def test_a_file_that_is_not_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lora.ckpt"
    path.write_bytes(b"x")
    with pytest.raises(GenserveError) as err:
        _load(path)
    _check_refusal(err.value, tmp_path, "is not a .safetensors file", [])


def _check_refusal(error: GenserveError, folder: Path, why: str, keys: list[str]) -> None:
    assert error.code is ErrorCode.INVALID_INPUT and error.details == {"field": "lora_model_name"}
    assert error.message.startswith("lora_model_name: ") and why in error.message, error.message
    assert str(folder) not in error.message, error.message
    for key in keys:
        assert key in error.message, error.message
