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


def test_a_shrinking_room_picks_offload_then_streaming(demo_models: Path) -> None:
    """The demo's real sizes, as a GPU pool would see them."""
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
    tight = max(transformer, encoder) + min(transformer, encoder) // 2  # each fits alone, not both
    # The encoder is kept there: the transformer cannot come on whole beside it, so it streams.
    assert choose(DIFFUSION, AUTO, transformer, tight, encoder) is STREAMED
    # The encoder is offloaded: the transformer takes turns with it...
    assert choose(DIFFUSION, AUTO, transformer, tight, 0, peak=encoder) is OFFLOADED
    # ...and is resident only where the encoder still fits beside it when it comes on.
    assert choose(DIFFUSION, AUTO, transformer, plenty, 0, peak=encoder) is RESIDENT
    small = transformer // 2  # the transformer does not fit at all
    assert choose(DIFFUSION, AUTO, transformer, small, 0) is STREAMED
    assert choose(DIFFUSION, AUTO, transformer, small, 0, on_host=True) is RESIDENT  # a CPU: nowhere to go
    assert choose(DIFFUSION, OFFLOADED, transformer, None, 0) is OFFLOADED  # forced
    assert choose(TEXT, AUTO, encoder, encoder - 1, 0) is RESIDENT  # cannot stream: the budget refuses it


def test_the_room_counts_free_memory_with_the_pool_s_own_models_and_offloaded_peaks() -> None:
    from genserve.models.pools import Pool, PoolTable
    from genserve.models.slots import ModelSlot

    def slot(name: str, kind: ModelKind, size: int, mode: str, device: str) -> ModelSlot:
        made = ModelSlot(ModelEntry(kind, name, Path(name)), memory_bytes=size, mode=mode)
        made.device, made.target = device, "cuda:0"
        return made

    table = PoolTable(Pool("default", frozenset()), [])
    kept = slot("kept", DIFFUSION, 40, "resident", "cuda:0")
    waiting = slot("waiting", TEXT, 16, "offloaded", "cpu")  # on the host between uses
    new = slot("new", ModelKind.VAE, 0, "resident", "cuda:0")
    # 10 bytes free while the kept model holds 40: the pool's room is 50, not 10.
    assert table.room(new, "cuda:0", 10, [kept, waiting, new]) == (50, 40, 16)
    waiting.device = "cuda:0"  # in use: on the device, its bytes out of the free memory
    assert table.room(new, "cuda:0", 0, [kept, waiting, new]) == (56, 40, 16)


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
    from genserve.models.loaders.transformer import load_transformer

    files = {
        p.name: p
        for p in write_transformer_files(demo_models / "diffusion_models" / DEMO_TRANSFORMER, tmp_path)
    }
    entry = ModelEntry(DIFFUSION, "demo_fp8_e4m3fn.safetensors", files["demo_fp8_e4m3fn.safetensors"])
    cpu = torch.device("cpu")
    upcast, stored = (load_transformer(entry, cpu, torch.float32) for _ in range(2))
    assert stored.narrow is not None
    narrowed = stored.narrow()
    assert narrowed < upcast.memory_bytes / 2
    assert narrowed == loaded_bytes(entry, torch.float32, keep_fp8=True)  # the estimate is exact
    assert any(p.dtype == torch.float8_e4m3fn for p in stored.model.transformer.parameters())
    want, got = transformer_output(upcast.model.transformer), transformer_output(stored.model.transformer)
    assert (got - want).abs().max() <= 0.15 * want.abs().max()  # biases are stored in fp8 too
    scaled = ModelEntry(DIFFUSION, "s", files["demo_fp8_scaled.safetensors"])
    assert load_transformer(scaled, cpu, torch.float32).narrow is None  # dequantised, nothing to keep


@pytest.fixture
def fp8_folder(demo_models: Path, tmp_path: Path) -> tuple[Path, int, int]:
    """A models folder holding the plain fp8 transformer; (folder, its fp32 bytes, its fp8 bytes)."""
    from genserve.models.demo.single_files import write_transformer_files

    folder = tmp_path / "models"
    files = write_transformer_files(
        demo_models / "diffusion_models" / DEMO_TRANSFORMER, folder / "diffusion_models"
    )
    for other in files:
        if other.name != "demo_fp8_e4m3fn.safetensors":
            other.unlink()
    entry = ModelEntry(DIFFUSION, "f", folder / "diffusion_models" / "demo_fp8_e4m3fn.safetensors")
    return folder, loaded_bytes(entry, torch.float32), loaded_bytes(entry, torch.float32, keep_fp8=True)


@pytest.mark.parametrize(
    ("policy", "budget", "kept"),
    [
        ("auto", None, False),  # fits as it is: computes without casting
        ("auto", "between", True),  # only fp8 fits: kept in fp8
        ("on", None, True),
        ("off", None, False),
    ],
)
def test_the_manager_keeps_fp8_by_policy_and_room(
    fp8_folder: tuple[Path, int, int], policy: str, budget: str | None, kept: bool
) -> None:
    folder, full, small = fp8_folder
    budgets = {"cpu": (full + small) // 2} if budget else {}
    models = ModelManager(
        ModelRegistry(folder),
        default_loaders(models_root=folder),
        default_device="cpu",
        memory_budget_bytes=budgets,
        fp8_storage=policy,
    )
    try:
        assert models.plan(DIFFUSION, "demo_fp8_e4m3fn.safetensors") == (
            "resident",
            small if kept else full,
            kept,
        )
        with models.use(DIFFUSION, "demo_fp8_e4m3fn.safetensors") as model:
            stored = {p.dtype for p in model.transformer.parameters()}
            assert (torch.float8_e4m3fn in stored) is kept
            assert model.dtype == torch.float32
        [stats] = models.loaded()
        assert (stats.memory_bytes, stats.fp8_stored) == (small if kept else full, kept)
    finally:
        models.close()


def test_with_fp8_storage_off_a_budget_only_fp8_fits_is_refused(fp8_folder: tuple[Path, int, int]) -> None:
    folder, full, small = fp8_folder
    models = ModelManager(
        ModelRegistry(folder),
        default_loaders(models_root=folder),
        default_device="cpu",
        memory_budget_bytes={"cpu": (full + small) // 2},
        fp8_storage="off",
    )
    try:
        with pytest.raises(GenserveError, match="budget"):
            models.load(DIFFUSION, "demo_fp8_e4m3fn.safetensors")
        assert models.loaded() == []
    finally:
        models.close()


@pytest.mark.parametrize(("value", "read"), [(True, "on"), (False, "off"), ("auto", "auto"), ("on", "on")])
def test_fp8_storage_reads_yaml_switches(value: object, read: str) -> None:
    from genserve.config.models import ModelsSettings

    assert ModelsSettings(fp8_storage=value).fp8_storage == read


def test_a_bad_fp8_storage_is_refused_naming_the_key() -> None:
    from pydantic import ValidationError

    from genserve.config.models import ModelsSettings

    with pytest.raises(ValidationError, match="fp8_storage"):
        ModelsSettings(fp8_storage="sometimes")


def test_a_lora_applies_unfused_on_an_fp8_stored_base(demo_models: Path, tmp_path: Path) -> None:
    from genserve.models.demo.lora_files import write_lora_layouts
    from genserve.models.demo.pipeline import DEMO_LORA
    from genserve.models.demo.single_files import write_transformer_files
    from genserve.models.loaders.lora import load_lora
    from genserve.models.loaders.transformer import load_transformer

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
        loaded = load_transformer(entry, cpu, torch.float32)
        if storage and loaded.narrow is not None:
            loaded.narrow()
        model = loaded.model
        assert model.dtype == torch.float32  # inputs go in the compute dtype, not the stored fp8
        base = transformer_output(model.transformer)
        with model.gate.applied(lora, 1.0):
            outputs[storage] = transformer_output(model.transformer)
        assert (outputs[storage] - base).abs().max() > 1e-3  # the LoRA changed the output
    assert (outputs[True] - outputs[False]).abs().max() <= 0.15 * outputs[False].abs().max()


def test_an_fp8_kept_transformer_streams_by_blocks(fp8_folder: tuple[Path, int, int]) -> None:
    """Layerwise casting and group offloading together, as auto gives where not even fp8 fits."""
    folder, _, _ = fp8_folder
    name = "demo_fp8_e4m3fn.safetensors"
    plain = ModelManager(ModelRegistry(folder), default_loaders(models_root=folder), default_device="cpu")
    streamed = ModelManager(
        ModelRegistry(folder),
        default_loaders(models_root=folder),
        default_device="cpu",
        memory_modes={DIFFUSION: STREAMED},
        fp8_storage="on",
    )
    try:
        with plain.use(DIFFUSION, name) as model:
            want = transformer_output(model.transformer)
        with streamed.use(DIFFUSION, name) as model:
            assert torch.float8_e4m3fn in {p.dtype for p in model.transformer.parameters()}
            got = transformer_output(model.transformer)
        assert streamed.loaded()[0].memory_mode == "streamed"
        assert (got - want).abs().max() <= 0.15 * want.abs().max()
    finally:
        plain.close()
        streamed.close()
