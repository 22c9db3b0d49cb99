"""Lip-sync model ids -> their files: the part of the model registry that answers for lip-sync.

A lip-sync model is not one file but four parts (the lip-sync ONNX, the audio-encoder ONNX, a
folder of background frames and their crop boxes), named by an id as in the original server's
config.yaml. Ids come from config (``lipsync.models``) and from folders under
``<models.dir>/lipsync/`` that hold a ``model.onnx``, so a model dropped in while running is
found like every other kind. Every path stays inside the models folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from genserve.config.lipsync import MODEL_FILE, LipsyncModelSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.models.kinds import ModelEntry, ModelKind


@dataclass(frozen=True)
class LipsyncFiles:
    model_id: str
    folder: Path
    model: Path
    audio_encoder: Path
    backgrounds: Path
    crop_rects: Path
    preload: bool
    preferred_gpu: int


def not_found(model_id: str) -> GenserveError:
    # The spec's wording; the field is named for the other doors' error bodies.
    return GenserveError(ErrorCode.MODEL_NOT_FOUND, f"Model '{model_id}' not found", field="model_id")


class LipsyncRegistry:
    """Read on every call, like ModelRegistry, so ids added on disk appear without a restart."""

    kind = ModelKind.LIPSYNC

    def __init__(self, models_dir: Path, configured: Mapping[str, LipsyncModelSettings]) -> None:
        self.models_dir = Path(models_dir)
        self.root = self.models_dir / ModelKind.LIPSYNC.value
        self._configured = dict(configured)

    def ids(self) -> list[str]:
        found = set(self._configured)
        if self.root.is_dir():
            found.update(
                p.name
                for p in self.root.iterdir()
                if not p.name.startswith(".") and (p / MODEL_FILE).is_file()
            )
        return sorted(found)

    def is_known(self, model_id: str) -> bool:
        return model_id in self._configured or (
            self._valid(model_id) and (self.root / model_id / MODEL_FILE).is_file()
        )

    def files(self, model_id: str) -> LipsyncFiles:
        if not self.is_known(model_id):
            raise not_found(model_id)
        settings = self._configured.get(model_id, LipsyncModelSettings())
        folder = self.root / model_id
        return LipsyncFiles(
            model_id=model_id,
            folder=folder,
            model=self._inside(folder, settings.model_path, "model_path", model_id),
            audio_encoder=self._inside(folder, settings.audio_encoder_path, "audio_encoder_path", model_id),
            backgrounds=self._inside(folder, settings.background_dir, "background_dir", model_id),
            crop_rects=self._inside(folder, settings.crop_rects_path, "crop_rects_path", model_id),
            preload=settings.preload,
            preferred_gpu=settings.preferred_gpu,
        )

    def missing(self, model_id: str) -> str | None:
        """What keeps a known id from loading (the first of its files that is not there), or None.

        A configured id is known whether or not its folder exists; this names the missing file and
        its setting, which the loader's own error would not. Checked by Health, ListModels,
        LoadModel and before a request loads it.
        """
        try:
            files = self.files(model_id)
        except GenserveError as exc:  # a path outside the models folder
            return exc.message
        parts = (
            ("model file", "model_path", files.model, False),
            ("audio encoder", "audio_encoder_path", files.audio_encoder, False),
            ("background folder", "background_dir", files.backgrounds, True),
            ("crop rects", "crop_rects_path", files.crop_rects, False),
        )
        for what, key, path, folder in parts:
            if path.is_dir() if folder else path.is_file():
                continue
            shown = path.relative_to(self.models_dir.resolve()).as_posix()  # never the server's path
            setting = f" (lipsync.models.{model_id}.{key})" if model_id in self._configured else ""
            return f"{what} {shown} is missing from the models folder{setting}"
        return None

    def check_available(self, model_id: str) -> None:
        """Raises the spec's ``Model 'X' not found``, completed with the missing file, if it cannot load."""
        if not self.is_known(model_id):
            raise not_found(model_id)
        problem = self.missing(model_id)
        if problem is not None:
            raise GenserveError(
                ErrorCode.MODEL_NOT_FOUND, f"Model '{model_id}' not found: {problem}", field="model_id"
            )

    def resolve(self, kind: ModelKind | str, name: str, field: str = "model_id") -> ModelEntry:
        """The registry's lookup for this kind: an id becomes an entry whose path is the model's folder."""
        if ModelKind(kind) is not ModelKind.LIPSYNC:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"{field}: the lip-sync registry holds only lip-sync models"
            )
        if not self.is_known(name):
            raise not_found(name)
        return ModelEntry(ModelKind.LIPSYNC, name, self.root / name)

    @staticmethod
    def _valid(model_id: str) -> bool:
        return bool(model_id) and not model_id.startswith(".") and not any(c in model_id for c in "/\\\x00")

    def _inside(self, folder: Path, path: Path, key: str, model_id: str) -> Path:
        resolved = (folder / path).resolve()
        root = self.models_dir.resolve()
        if resolved != root and root not in resolved.parents:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"lipsync.models.{model_id}.{key}: {path} is outside the models folder {self.models_dir}",
                field=key,
            )
        return resolved
