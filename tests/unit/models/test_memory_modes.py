"""Memory modes: which one a load gets from the room on its device, and what each does (checked on
the CPU with the modes forced: the same code moves and streams the weights as on a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genserve.app.runtime import memory_modes
from genserve.errors import GenserveError
from genserve.models.demo.pipeline import DEMO_TEXT_ENCODER, DEMO_TRANSFORMER
from genserve.models.formats.sizes import loaded_bytes
from genserve.models.kinds import ModelEntry, ModelKind
from genserve.models.loaders import default_loaders
from genserve.models.loaders.base import module_bytes
from genserve.models.manager import ModelManager
from genserve.models.memory import MemoryMode, choose
from genserve.models.registry import ModelRegistry
from tests.unit.models.loaders.test_single_files import transformer_output

DIFFUSION, TEXT = ModelKind.DIFFUSION, ModelKind.TEXT_ENCODER
AUTO, RESIDENT, OFFLOADED, STREAMED = (
    MemoryMode.AUTO,
    MemoryMode.RESIDENT,
    MemoryMode.OFFLOADED,
    MemoryMode.STREAMED,
)


def test_a_shrinking_budget_picks_offload_then_streaming(demo_models: Path) -> None:
    """The demo's real sizes, as a GPU pool would see them: the transformer loads first and stays."""
    transformer = loaded_bytes(
        ModelEntry(DIFFUSION, "t", demo_models / "diffusion_models" / DEMO_TRANSFORMER), torch.bfloat16
    )
    encoder = loaded_bytes(
        ModelEntry(TEXT, "e", demo_models / "text_encoders" / DEMO_TEXT_ENCODER), torch.bfloat16
    )
    assert transformer > 0 and encoder > 0
    plenty = transformer + encoder
    assert choose(DIFFUSION, AUTO, transformer, plenty, 0) is RESIDENT
    assert choose(TEXT, AUTO, encoder, plenty, transformer) is RESIDENT
    tight = max(transformer, encoder)  # each fits alone, not both
    assert choose(DIFFUSION, AUTO, transformer, tight, 0) is RESIDENT
    assert choose(TEXT, AUTO, encoder, tight, transformer) is OFFLOADED
    small = transformer // 2  # the transformer does not fit at all
    assert choose(DIFFUSION, AUTO, transformer, small, 0) is STREAMED
    assert choose(TEXT, AUTO, encoder, small, 0) is RESIDENT or encoder <= small
    assert choose(DIFFUSION, AUTO, transformer, small, 0, on_host=True) is RESIDENT  # a CPU: nowhere to go
    assert choose(DIFFUSION, OFFLOADED, transformer, None, 0) is OFFLOADED  # forced


def test_a_mode_a_kind_cannot_take_is_refused_naming_the_setting() -> None:
    with pytest.raises(GenserveError, match=r"models.memory_modes.text_encoders: streamed is not possible"):
        ModelManager(
            ModelRegistry(Path(".")), {}, memory_modes=memory_modes("auto", {"text_encoders": "streamed"})
        )


def manager(demo_models: Path, **modes: str) -> ModelManager:
    return ModelManager(
        ModelRegistry(demo_models),
        default_loaders(models_root=demo_models),
        default_device="cpu",
        memory_modes=memory_modes("auto", modes),
    )


def test_a_streamed_transformer_accounts_one_block_and_computes_the_same(demo_models: Path) -> None:
    resident, streamed = manager(demo_models), manager(demo_models, diffusion_models="streamed")
    try:
        with resident.use(DIFFUSION, DEMO_TRANSFORMER) as model:
            want, whole = transformer_output(model.transformer), module_bytes(model.transformer)
        with streamed.use(DIFFUSION, DEMO_TRANSFORMER) as model:
            got = transformer_output(model.transformer)
            blocks = model.transformer.transformer_blocks
        [stats] = streamed.loaded()
        assert stats.memory_mode == "streamed" and stats.device == "cpu"
        assert stats.memory_bytes == whole - sum(module_bytes(b) for b in blocks) + max(
            module_bytes(b) for b in blocks
        )
        assert stats.memory_bytes < whole
        assert torch.equal(got, want)
    finally:
        resident.close()
        streamed.close()


def test_an_offloaded_text_encoder_is_on_its_device_only_while_in_use(demo_models: Path) -> None:
    models = manager(demo_models, text_encoders="offloaded")
    try:
        models.load(TEXT, DEMO_TEXT_ENCODER)
        [stats] = models.loaded()
        assert (stats.memory_mode, stats.device) == ("offloaded", "cpu") and stats.memory_bytes > 0
        with models.use(TEXT, DEMO_TEXT_ENCODER) as encoder:
            assert encoder.device == torch.device("cpu")  # the target; on a GPU host it is cuda here
            inputs = encoder.processor(text=["a hat"])
            with torch.no_grad():
                assert encoder.model.model(**inputs).last_hidden_state.shape[-1] == 128
    finally:
        models.close()


def test_fp8_storage_keeps_an_unscaled_fp8_file_in_fp8(demo_models: Path, tmp_path: Path) -> None:
    from genserve.models.demo.single_files import write_transformer_files
    from genserve.models.loaders.transformer import make_transformer_loader

    files = {
        p.name: p
        for p in write_transformer_files(demo_models / "diffusion_models" / DEMO_TRANSFORMER, tmp_path)
    }
    entry = ModelEntry(DIFFUSION, "demo_fp8_e4m3fn.safetensors", files["demo_fp8_e4m3fn.safetensors"])
    cpu = torch.device("cpu")
    upcast = make_transformer_loader(fp8_storage=False)(entry, cpu, torch.float32)
    stored = make_transformer_loader(fp8_storage=True)(entry, cpu, torch.float32)
    assert stored.memory_bytes < upcast.memory_bytes / 2
    assert any(p.dtype == torch.float8_e4m3fn for p in stored.model.transformer.parameters())
    want, got = transformer_output(upcast.model.transformer), transformer_output(stored.model.transformer)
    assert (got - want).abs().max() <= 0.15 * want.abs().max()  # biases are stored in fp8 too
    scaled = ModelEntry(DIFFUSION, "s", files["demo_fp8_scaled.safetensors"])
    assert (
        make_transformer_loader(fp8_storage=True)(scaled, cpu, torch.float32).memory_bytes
        == upcast.memory_bytes
    )


def test_a_lora_applies_unfused_on_an_fp8_stored_base(demo_models: Path, tmp_path: Path) -> None:
    from genserve.models.demo.lora_files import write_lora_layouts
    from genserve.models.demo.pipeline import DEMO_LORA
    from genserve.models.demo.single_files import write_transformer_files
    from genserve.models.loaders.lora import load_lora
    from genserve.models.loaders.transformer import make_transformer_loader

    files = {
        p.name: p
        for p in write_transformer_files(demo_models / "diffusion_models" / DEMO_TRANSFORMER, tmp_path)
    }
    lightning = write_lora_layouts(tmp_path / "loras", demo_models / "loras" / DEMO_LORA)[0]
    cpu = torch.device("cpu")
    lora = load_lora(ModelEntry(ModelKind.LORA, lightning.name, lightning), cpu, torch.float32).model
    entry = ModelEntry(DIFFUSION, "f", files["demo_fp8_e4m3fn.safetensors"])
    outputs = {}
    for storage in (False, True):
        model = make_transformer_loader(fp8_storage=storage)(entry, cpu, torch.float32).model
        assert model.dtype == torch.float32  # inputs go in the compute dtype, not the stored fp8
        base = transformer_output(model.transformer)
        with model.gate.applied(lora, 1.0):
            outputs[storage] = transformer_output(model.transformer)
        assert (outputs[storage] - base).abs().max() > 1e-3  # the LoRA changed the output
    assert (outputs[True] - outputs[False]).abs().max() <= 0.15 * outputs[False].abs().max()
