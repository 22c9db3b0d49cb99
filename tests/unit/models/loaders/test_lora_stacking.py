"""Several LoRAs at once (a ComfyUI chain of LoraLoaderModelOnly nodes) give ComfyUI's weights
W + sum(strength_i * delta_i), in every way the transformer is kept.

The reference is one LoRA whose delta is that sum, written by concatenating the ranks: its
up-projection ``[s_a * B_a, s_b * B_b]`` times its down-projection ``[A_a; A_b]`` is
``s_a * B_a A_a + s_b * B_b A_b``, so it must give the chain's output up to rounding. peft casts
a LoRA's weights to its base layer's dtype, so on an fp8-stored base they pass through fp8: the
test LoRAs hold fp8-exact values and power-of-two strengths, so every mode is compared alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genserve.models.demo.pipeline import DEMO_TRANSFORMER
from genserve.models.demo.single_files import write_transformer_files
from genserve.models.kinds import ModelEntry, ModelKind
from genserve.models.loaders.lora import LoraWeights, load_lora
from genserve.models.loaders.transformer import DiffusionModel, load_transformer
from tests.unit.models.loaders.test_single_files import transformer_output

CPU = torch.device("cpu")
# AdapterGate keeps every LoRA it has loaded as one more adapter on the shared transformer.
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


def write_random_lora(
    path: Path, transformer_folder: Path, seed: int, attention_only: bool, fp8_exact: bool = True
) -> Path:
    """A rank-2 diffusers-layout LoRA (no alpha: scale 1) on the attention Linears or on all; its
    values fp8-exact unless ``fp8_exact`` is False."""
    model = load_transformer(
        ModelEntry(ModelKind.DIFFUSION, "t", transformer_folder), CPU, torch.float32
    ).model.transformer
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (".attn." in name or not attention_only):
            down = torch.randn(2, module.in_features, generator=generator)
            up = torch.randn(module.out_features, 2, generator=generator)
            exact = _fp8_exact if fp8_exact else (lambda values: values)
            tensors[f"transformer.{name}.lora_A.weight"] = exact(down * 0.05)
            tensors[f"transformer.{name}.lora_B.weight"] = exact(up * 0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def _fp8_exact(values: torch.Tensor) -> torch.Tensor:
    """Values fp8 holds exactly, far enough from its subnormals to stay exact when halved."""
    values = values.sign() * values.abs().clamp(min=1 / 32)
    return values.to(torch.float8_e4m3fn).to(torch.float32)


def write_summed_lora(path: Path, parts: Iterable[tuple[Path, float]]) -> Path:
    """One diffusers-layout LoRA whose delta is sum(strength * delta) of ``parts``' files."""
    downs: dict[str, list[torch.Tensor]] = {}
    ups: dict[str, list[torch.Tensor]] = {}
    for file, strength in parts:
        tensors = load_file(str(file))
        for key, value in tensors.items():
            if key.endswith(".lora_A.weight"):
                module = key.removesuffix(".lora_A.weight")
                downs.setdefault(module, []).append(value)
                ups.setdefault(module, []).append(tensors[f"{module}.lora_B.weight"] * strength)
    summed = {}
    for module in downs:
        summed[f"{module}.lora_A.weight"] = torch.cat(downs[module], dim=0)
        summed[f"{module}.lora_B.weight"] = torch.cat(ups[module], dim=1)
    save_file(summed, str(path))
    return path


def _load(path: Path) -> LoraWeights:
    return load_lora(ModelEntry(ModelKind.LORA, path.name, path), CPU, torch.float32).model


@pytest.fixture(scope="module")
def loras(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoraWeights]:
    folder = tmp_path_factory.mktemp("loras")
    transformer = demo_models / "diffusion_models" / DEMO_TRANSFORMER
    a = write_random_lora(folder / "a.safetensors", transformer, seed=1, attention_only=True)
    b = write_random_lora(folder / "b.safetensors", transformer, seed=2, attention_only=False)
    summed = write_summed_lora(folder / "sum.safetensors", [(a, 0.5), (b, -2.0)])
    return {"a": _load(a), "b": _load(b), "sum": _load(summed)}


def _resident(demo_models: Path, tmp_path: Path) -> DiffusionModel:
    folder = demo_models / "diffusion_models" / DEMO_TRANSFORMER
    return load_transformer(ModelEntry(ModelKind.DIFFUSION, "t", folder), CPU, torch.float32).model


def _streamed(demo_models: Path, tmp_path: Path) -> DiffusionModel:
    folder = demo_models / "diffusion_models" / DEMO_TRANSFORMER
    loaded = load_transformer(ModelEntry(ModelKind.DIFFUSION, "t", folder), CPU, torch.float32)
    assert loaded.stream is not None
    loaded.stream(CPU)
    return loaded.model


def _fp8_stored(demo_models: Path, tmp_path: Path) -> DiffusionModel:
    files = write_transformer_files(demo_models / "diffusion_models" / DEMO_TRANSFORMER, tmp_path)
    [file] = [f for f in files if f.name == "demo_fp8_e4m3fn.safetensors"]
    loaded = load_transformer(ModelEntry(ModelKind.DIFFUSION, "f", file), CPU, torch.float32)
    assert loaded.narrow is not None
    loaded.narrow()
    return loaded.model


MODES: dict[str, Callable[[Path, Path], DiffusionModel]] = {
    "resident": _resident,
    "streamed": _streamed,
    "fp8_stored": _fp8_stored,
}


def _stacked(model: DiffusionModel, adapters: list[tuple[LoraWeights, float]]) -> torch.Tensor:
    with model.gate.stacked(adapters):
        return transformer_output(model.transformer)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_chain_adds_each_delta_at_its_strength(
    mode: str, loras: dict[str, LoraWeights], demo_models: Path, tmp_path: Path
) -> None:
    model = MODES[mode](demo_models, tmp_path)
    a, b, summed = loras["a"], loras["b"], loras["sum"]
    base = transformer_output(model.transformer)
    single = _stacked(model, [(a, 0.5)])
    chain = _stacked(model, [(a, 0.5), (b, -2.0)])
    reference = _stacked(model, [(summed, 1.0)])
    assert (chain - base).abs().max() > 1e-2 and (chain - single).abs().max() > 1e-2
    assert torch.allclose(chain, reference, atol=1e-5, rtol=1e-5), (chain - reference).abs().max()
    # The chain's order changes nothing, not even the rounding.
    assert torch.equal(_stacked(model, [(b, -2.0), (a, 0.5)]), chain)
    # The same LoRA twice adds its delta twice: one adapter at the sum of the strengths.
    assert torch.equal(_stacked(model, [(a, 0.25), (a, 0.25)]), single)
    assert not torch.equal(_stacked(model, [(a, 0.5), (a, 0.5)]), single)
    # Nothing stays behind: one LoRA, then none, give what they gave before any chain.
    assert torch.equal(_stacked(model, [(a, 0.5)]), single)
    with model.gate.applied(None, 1.0):
        assert torch.equal(transformer_output(model.transformer), base)


def test_runs_with_different_chains_never_see_each_other_s(
    loras: dict[str, LoraWeights], demo_models: Path, tmp_path: Path
) -> None:
    model = _resident(demo_models, tmp_path)
    a, b = loras["a"], loras["b"]
    sets = [[], [(a, 0.5)], [(a, 0.5), (b, -2.0)], [(b, 0.5), (a, 1.0)]]
    expected = [_stacked(model, adapters) for adapters in sets]
    results: dict[int, torch.Tensor] = {}
    start = threading.Barrier(12)

    def work(i: int) -> None:
        start.wait()
        results[i] = _stacked(model, sets[i % len(sets)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, out in results.items():
        assert torch.equal(out, expected[i % len(sets)]), sets[i % len(sets)]
    assert len(results) == 12


def test_a_lora_on_an_fp8_stored_base_keeps_its_own_precision(demo_models: Path, tmp_path: Path) -> None:
    """peft builds the adapter in the base layer's dtype (fp8 here): the gate puts the file's
    exact values back, so the LoRA acts as on the same base weights held in fp32. (The file's
    Linear biases are rounded to fp8 first: fp8 storage keeps them in fp8 too.)"""
    transformer = demo_models / "diffusion_models" / DEMO_TRANSFORMER
    path = write_random_lora(
        tmp_path / "fine.safetensors", transformer, 3, attention_only=False, fp8_exact=False
    )
    lora = _load(path)
    [file] = [
        f for f in write_transformer_files(transformer, tmp_path) if f.name == "demo_fp8_e4m3fn.safetensors"
    ]
    state = load_file(str(file))
    for key, value in state.items():
        if key.endswith(".bias") and state.get(key.removesuffix(".bias") + ".weight", value).dim() == 2:
            state[key] = value.to(torch.float8_e4m3fn).to(value.dtype)
    save_file(state, str(file))
    stored = load_transformer(ModelEntry(ModelKind.DIFFUSION, "f", file), CPU, torch.float32)
    assert stored.narrow is not None
    stored.narrow()
    wide = load_transformer(ModelEntry(ModelKind.DIFFUSION, "w", file), CPU, torch.float32).model
    base = transformer_output(wide.transformer)
    assert torch.equal(transformer_output(stored.model.transformer), base)
    want = _stacked(wide, [(lora, 1.0)])
    got = _stacked(stored.model, [(lora, 1.0)])
    assert (want - base).abs().max() > 1e-2
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-6), (got - want).abs().max()
