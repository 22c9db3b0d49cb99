"""Every model a server knows of: on disk, named by the config, or loaded, in one table.

The REST admin endpoint and ``genserve models list`` show the same rows, so an operator sees the
same answer from both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from genserve.errors import ErrorCode, GenserveError
from genserve.models.describe import describe
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelEntry, ModelKind
from genserve.models.slots import ModelStats


@dataclass
class InventoryRow:
    kind: str
    name: str
    on_disk: bool
    size_bytes: int
    configured_as: list[str] = field(default_factory=list)
    stats: ModelStats | None = None
    format: str = ""  # what the files are, detected from their contents
    dtype: str = ""  # the dtype holding most of the weights
    # The memory mode it has (loaded) or a load now would get, and the bytes it takes or would.
    memory_mode: str = ""
    loaded_bytes: int = 0
    fp8_stored: bool = False  # its weights kept (or to be kept) in fp8

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        stats = row.pop("stats") or {}
        for key in ("kind", "name"):
            stats.pop(key, None)
        row.update(stats or {"loaded": False, "device": None, "memory_bytes": 0})
        return row


def _described(manager: ModelManager, row: InventoryRow, entry: ModelEntry) -> None:
    row.format, row.dtype = describe(entry)
    try:
        row.memory_mode, row.loaded_bytes, row.fp8_stored = manager.plan(entry.kind, entry.name)
    except GenserveError:
        row.memory_mode = ""  # a name that does not resolve any more: nothing to plan


def configured_models(pipeline: Any) -> dict[str, tuple[ModelKind, str]]:
    """The pipeline defaults that name a model: setting key -> (kind, name)."""
    keys = {
        "vae_model_name": ModelKind.VAE,
        "clip_model_name": ModelKind.TEXT_ENCODER,
        "unet_model_name": ModelKind.DIFFUSION,
        "lora_model_name": ModelKind.LORA,
    }
    named = {f"pipeline.{key}": (kind, getattr(pipeline, key)) for key, kind in keys.items()}
    return {key: value for key, value in named.items() if value[1]}


def inventory(
    manager: ModelManager, configured: Mapping[str, tuple[ModelKind, str]], kind: ModelKind | None = None
) -> list[InventoryRow]:
    rows: dict[tuple[str, str], InventoryRow] = {}
    for entry in manager.registry.entries(kind):
        rows[entry.key] = InventoryRow(entry.kind.value, entry.name, True, entry.disk_bytes())
        _described(manager, rows[entry.key], entry)
    for setting, (model_kind, name) in configured.items():
        if kind is not None and model_kind is not kind:
            continue
        try:
            key = manager.registry.resolve(model_kind, name, setting).key
        except GenserveError as exc:
            if exc.code is not ErrorCode.MODEL_NOT_FOUND:
                raise
            key = (model_kind.value, name)
            rows.setdefault(key, InventoryRow(model_kind.value, name, False, 0))
        rows[key].configured_as.append(setting)
    for stats in manager.stats():
        if kind is not None and stats.kind != kind.value:
            continue
        key = (stats.kind, stats.name)
        row = rows.setdefault(key, InventoryRow(stats.kind, stats.name, False, 0))
        row.stats = stats
        row.memory_mode, row.loaded_bytes, row.fp8_stored = (
            stats.memory_mode,
            stats.memory_bytes,
            stats.fp8_stored,
        )
    return [rows[key] for key in sorted(rows)]
