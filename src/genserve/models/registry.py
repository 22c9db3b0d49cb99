"""Model names -> files on disk, one folder per kind, the layout ComfyUI users already have.

A request names a model by its file or folder name inside its kind's folder; a name is a single
path component, so it can never escape that folder. A name with a weights suffix
(``qwen_image_vae.safetensors``) also matches a diffusers folder with the same stem
(``vae/qwen_image_vae/``), so requests written for ComfyUI's single files reach folder models.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from genserve.config.lipsync import LipsyncModelSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.models.kinds import WEIGHT_SUFFIXES, ModelEntry, ModelKind
from genserve.models.lipsync_registry import LipsyncRegistry

__all__ = ["WEIGHT_SUFFIXES", "ModelEntry", "ModelKind", "ModelRegistry"]


class ModelRegistry:
    """Reads the models folder on every call, so models dropped in while running are found.

    Lip-sync models are named by id, not by file: ``lipsync`` (a LipsyncRegistry over the
    ``lipsync.models`` settings and the folders under ``lipsync/``) answers for that kind.
    """

    def __init__(self, root: Path, lipsync_models: Mapping[str, LipsyncModelSettings] | None = None) -> None:
        self.root = Path(root)
        self.lipsync = LipsyncRegistry(self.root, lipsync_models or {})

    def folder(self, kind: ModelKind) -> Path:
        return self.root / kind.value

    def available(self, kind: ModelKind) -> list[str]:
        if kind is ModelKind.LIPSYNC:
            return self.lipsync.ids()
        folder = self.folder(kind)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def entries(self, kind: ModelKind | None = None) -> list[ModelEntry]:
        kinds = [kind] if kind else list(ModelKind)
        return [ModelEntry(k, name, self.folder(k) / name) for k in kinds for name in self.available(k)]

    def find(self, kind: ModelKind, name: str) -> Path | None:
        """What ``name`` means in the kind's folder: the file or folder of that name, else the
        diffusers folder a weights file name stands for (``qwen_image_vae.safetensors`` ->
        ``qwen_image_vae/``). One rule for loading, ``FilesExist`` and uploads alike."""
        folder = self.folder(kind)
        if (folder / name).exists():
            return folder / name
        for suffix in WEIGHT_SUFFIXES:
            stem = name.removesuffix(suffix)
            if stem != name and (folder / stem).is_dir():
                return folder / stem
        return None

    def resolve(self, kind: ModelKind | str, name: str, field: str = "model_name") -> ModelEntry:
        kind = ModelKind(kind)
        if kind is ModelKind.LIPSYNC:
            return self.lipsync.resolve(kind, name)
        if not name or name.startswith(".") or "/" in name or "\\" in name or "\x00" in name:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"{field}: {name!r} is not a model name (a file or folder name)",
                field=field,
            )
        found = self.find(kind, name)
        if found is not None:
            return ModelEntry(kind, found.name, found)
        names = self.available(kind)
        label = kind.label[0].upper() + kind.label[1:]
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{label} not found: {name} ({field}); available: {', '.join(names) or 'none'}",
            field=field,
            kind=kind.value,
            available=names,
        )
