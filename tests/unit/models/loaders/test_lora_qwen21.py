"""LoRAs on Qwen-Image 2.1's transformer (genserve's own module, no peft): applied as hooks through
the same gate, each the exact delta of its weights merged in, diffusers' unfused MLP names landing
on the fused ``gate_up``, chains summing, and nothing left behind when a run has none."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from genserve.errors import GenserveError
from genserve.models.demo.qwen21 import QWEN21_TRANSFORMER, build_qwen21_transformer
from genserve.models.loaders.lora import load_lora
from genserve.models.loaders.transformer import DiffusionModel, load_transformer
from genserve.models.registry import ModelEntry, ModelKind

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qwen21_lora")
    build_qwen21_transformer(out, context_dim=32, seed=0)
    return out


def _model(folder: Path) -> DiffusionModel:
    entry = ModelEntry(ModelKind.DIFFUSION, QWEN21_TRANSFORMER, folder / QWEN21_TRANSFORMER)
    return load_transformer(entry, CPU, torch.float32).model


def _lora(path: Path, model: torch.nn.Module, seed: int, unfused_mlp: bool = True) -> tuple[Path, dict]:
    """A rank-2 diffusers-layout LoRA on every block Linear, the MLP named as diffusers' unfused
    model names it; returns the file and the merged delta per module of ``model``."""
    g = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for name, module in model.named_modules():
        if not (isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.")):
            continue
        halves = (
            [("gate_layer", 0), ("proj", 1)] if name.endswith("gate_up") and unfused_mlp else [(None, None)]
        )
        rows = module.out_features // len(halves)
        parts = []
        for half_name, _ in halves:
            down = torch.randn(2, module.in_features, generator=g) * 0.05
            up = torch.randn(rows, 2, generator=g) * 0.05
            target = name if half_name is None else name.replace("gate_up", half_name)
            tensors[f"transformer.{target}.lora_A.weight"] = down
            tensors[f"transformer.{target}.lora_B.weight"] = up
            parts.append(up @ down)
        deltas[name] = torch.cat(parts)
    path = path.with_suffix(".safetensors")
    save_file(tensors, str(path))
    return path, deltas


def _loaded(path: Path):  # -> LoraWeights
    return load_lora(ModelEntry(ModelKind.LORA, path.name, path), CPU, torch.float32).model


def _run(model: DiffusionModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(1, 64, 4, 4, generator=g), torch.randn(1, 6, 32, generator=g)
    with torch.no_grad():
        return model.transformer(x, torch.tensor([0.6]), context)


def _merged(folder: Path, deltas: list[tuple[dict, float]]) -> torch.Tensor:
    merged = _model(folder)
    with torch.no_grad():
        for delta, strength in deltas:
            for name, value in delta.items():
                merged.transformer.get_submodule(name).weight.add_(value * strength)
    return _run(merged)


def test_a_lora_is_its_delta_merged_in_and_gone_without_it(folder: Path, tmp_path: Path) -> None:
    model = _model(folder)
    base = _run(model)
    path, delta = _lora(tmp_path / "a", model.transformer, seed=1)
    lora = _loaded(path)
    with model.gate.applied(lora, 0.8):
        with_lora = _run(model)
    assert torch.allclose(with_lora, _merged(folder, [(delta, 0.8)]), atol=1e-4)
    assert not torch.allclose(with_lora, base, atol=1e-3)
    with model.gate.applied(None, 1.0):
        assert torch.equal(_run(model), base)


def test_a_chain_sums_and_a_fused_mlp_lora_fits_too(folder: Path, tmp_path: Path) -> None:
    model = _model(folder)
    a, delta_a = _lora(tmp_path / "a", model.transformer, seed=1)
    b, delta_b = _lora(tmp_path / "b", model.transformer, seed=2, unfused_mlp=False)
    with model.gate.stacked([(_loaded(a), 0.5), (_loaded(b), 1.5)]):
        chained = _run(model)
    assert torch.allclose(chained, _merged(folder, [(delta_a, 0.5), (delta_b, 1.5)]), atol=1e-4)


def test_a_lora_of_another_model_is_refused_naming_a_module(folder: Path, tmp_path: Path) -> None:
    model = _model(folder)
    path = tmp_path / "other.safetensors"
    save_file(
        {
            "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight": torch.zeros(2, 256),
            "transformer.transformer_blocks.0.attn.add_q_proj.lora_B.weight": torch.zeros(256, 2),
        },
        str(path),
    )
    base = _run(model)
    with pytest.raises(GenserveError, match="add_q_proj") as refused, model.gate.applied(_loaded(path), 1.0):
        pass
    assert refused.value.details["field"] == "lora_model_name"
    with model.gate.applied(None, 1.0):
        assert torch.equal(_run(model), base)
