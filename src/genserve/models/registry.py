"""Model names -> files on disk, one folder per kind, the layout ComfyUI users already have.

A request names a model by its file or folder name inside its kind's folder; a name is a single
path component, so it can never escape that folder. A name with a weights suffix
(``qwen_image_vae.safetensors``) also matches a diffusers folder with the same stem
(``vae/qwen_image_vae/``), so requests written for ComfyUI's single files reach folder models.

Hugging Face models are found too: a diffusers snapshot folder under ``diffusion_models/`` also
answers for its VAE and text encoder (it is used as a whole), and a repo id (``Qwen/Qwen-Image-Edit-2509``)
names the hub-cache folder ``models--Qwen--Qwen-Image-Edit-2509`` in the kind's folder, in
``diffusion_models/``, or in the Hugging Face cache (``models.hf_home``).

The ``llm`` kind also answers for a ComfyUI single-file LLM in ``text_encoders/`` (Qwen-Image 2.1's
Qwen3.5 prompt enhancers; formats/llm_single_file tells one by its tensors), where ComfyUI users
keep it, by its file name there; the ``text_encoders`` kind leaves such files out of its list, as
no text encoder node can use one, so CLIPLoader lists each file once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from genserve.config.lipsync import LipsyncModelSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats.layouts import CACHE_FOLDER, REPO_ID, cache_folder_name, is_snapshot
from genserve.models.formats.llm_single_file import detect_file
from genserve.models.kinds import STORAGE_MARK, STORAGES, WEIGHT_SUFFIXES, ModelEntry, ModelKind
from genserve.models.lipsync_registry import LipsyncRegistry
from genserve.storage.paths import check_name, shown

__all__ = ["WEIGHT_SUFFIXES", "ModelEntry", "ModelKind", "ModelRegistry"]

SIDECAR = ".tokenizer"  # text_encoders/<stem>.tokenizer/ beside <stem>.safetensors (tokenizer_files)
# The kinds a diffusers snapshot in diffusion_models/ also answers for (its vae/ and text_encoder/).
SNAPSHOT_PARTS = (ModelKind.VAE, ModelKind.TEXT_ENCODER)


def _children(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _names(folder: Path) -> list[str]:
    return [p.name for p in _children(folder)]


def _repo_id(folder_name: str) -> str | None:
    """A hub-cache folder's repo id (``models--Qwen--Qwen-Image`` -> ``Qwen/Qwen-Image``): it is
    listed, and asked for, by that."""
    match = CACHE_FOLDER.match(folder_name)
    return f"{match.group(1)}/{match.group(2)}" if match else None


def _storage_of(kind: ModelKind, name: str, field: str) -> tuple[str, str | None]:
    """``<file>#fp8_e4m3fn`` -> (the file's name, the storage): a diffusion model's rounded copy."""
    base, mark, storage = name.rpartition(STORAGE_MARK)
    if not mark or kind is not ModelKind.DIFFUSION:
        return name, None
    if storage not in STORAGES:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: {shown(name)}: a stored copy is one of {', '.join(STORAGES)}",
            field=field,
        )
    return base, storage


def check_model_name(name: str, field: str) -> str:
    """A model name is one file or folder name (or a repo id, two), bounded like any file name,
    so a 5,000-character name is INVALID_INPUT here and never reaches the file system."""
    plain = "/" not in name or REPO_ID.match(name)
    if not name or name.startswith(".") or not plain or "\\" in name or "\x00" in name:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: {shown(name)} is not a model name (a file or folder name)",
            field=field,
        )
    check_name(cache_folder_name(name) if REPO_ID.match(name) else name, field)
    return name


class ModelRegistry:
    """Reads the models folder on every call, so models dropped in while running are found.

    Lip-sync models are named by id, not by file: ``lipsync`` (a LipsyncRegistry over the
    ``lipsync.models`` settings and the folders under ``lipsync/``) answers for that kind.
    """

    def __init__(
        self,
        root: Path,
        lipsync_models: Mapping[str, LipsyncModelSettings] | None = None,
        hf_home: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.lipsync = LipsyncRegistry(self.root, lipsync_models or {})
        self.hub = Path(hf_home).expanduser() / "hub" if hf_home is not None else None

    def folder(self, kind: ModelKind) -> Path:
        return self.root / kind.value

    def available(self, kind: ModelKind) -> list[str]:
        if kind is ModelKind.LIPSYNC:
            return self.lipsync.ids()
        found = {_repo_id(n) or n for n in _names(self.folder(kind))}
        if kind is ModelKind.TEXT_ENCODER:  # a single file's tokenizer folder is part of it, not a model
            found -= {
                n for n in found if n.endswith(SIDECAR) and n.removesuffix(SIDECAR) + ".safetensors" in found
            }
            found -= set(self._single_file_llms())
        if kind is ModelKind.LLM:
            found.update(self._single_file_llms())
        if kind in SNAPSHOT_PARTS:
            found.update(p.name for p in _children(self.folder(ModelKind.DIFFUSION)) if is_snapshot(p))
        if kind in SNAPSHOT_PARTS or kind is ModelKind.DIFFUSION:
            found.update(self._cached_repo_ids())
        return sorted(found)

    def entries(self, kind: ModelKind | None = None) -> list[ModelEntry]:
        kinds = [kind] if kind else list(ModelKind)
        found = []
        for k in kinds:
            for name in self.available(k):
                path = self.find(k, name) if k is not ModelKind.LIPSYNC else self.folder(k) / name
                found.append(ModelEntry(k, name, path if path is not None else self.folder(k) / name))
        return found

    def find(self, kind: ModelKind, name: str) -> Path | None:
        """What ``name`` means in the kind's folder: the file or folder of that name, else the
        diffusers folder a weights file name stands for (``qwen_image_vae.safetensors`` ->
        ``qwen_image_vae/``), a snapshot in ``diffusion_models/`` for its parts, a repo id's cache
        folder. One rule for loading, ``FilesExist`` and uploads alike."""
        if REPO_ID.match(name):
            return self._by_repo_id(kind, name)
        folders = [self.folder(kind)]
        if kind in SNAPSHOT_PARTS:
            folders.append(self.folder(ModelKind.DIFFUSION))
        for folder in folders:
            snapshots_only = folder != self.folder(kind)
            for candidate in (name, *(name.removesuffix(s) for s in WEIGHT_SUFFIXES if name.endswith(s))):
                path = folder / candidate
                if (
                    path.exists()
                    and (candidate == name or path.is_dir())
                    and (not snapshots_only or is_snapshot(path))
                ):
                    return path
        if kind is ModelKind.LLM and name in self._single_file_llms():
            return self.folder(ModelKind.TEXT_ENCODER) / name
        return None

    def _single_file_llms(self) -> list[str]:
        """The files in ``text_encoders/`` whose tensors are a causal LM (cached per file)."""
        return [p.name for p in _children(self.folder(ModelKind.TEXT_ENCODER)) if detect_file(p) is not None]

    def _by_repo_id(self, kind: ModelKind, repo_id: str) -> Path | None:
        name = cache_folder_name(repo_id)
        roots = [self.folder(kind), self.folder(ModelKind.DIFFUSION), self.hub]
        for root in roots:
            if root is not None and (root / name / "snapshots").is_dir():
                return root / name
        return None

    def _cached_repo_ids(self) -> list[str]:
        """Diffusers snapshots in the Hugging Face cache, by repo id."""
        found = []
        for folder in _children(self.hub):
            repo_id = _repo_id(folder.name)
            if repo_id and is_snapshot(folder):
                found.append(repo_id)
        return found

    def resolve(self, kind: ModelKind | str, name: str, field: str = "model_name") -> ModelEntry:
        kind = ModelKind(kind)
        if kind is ModelKind.LIPSYNC:
            if name:  # an id is one folder name; the lip-sync registry answers for the rest
                check_name(name, field)
            return self.lipsync.resolve(kind, name)
        name, storage = _storage_of(kind, name, field)
        check_model_name(name, field)
        found = self.find(kind, name)
        if found is not None:
            canonical = name if REPO_ID.match(name) else found.name
            if storage is not None:
                return ModelEntry(kind, f"{canonical}{STORAGE_MARK}{storage}", found, storage)
            return ModelEntry(kind, canonical, found)
        names = self.available(kind)
        label = kind.label[0].upper() + kind.label[1:]
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND,
            f"{label} not found: {name} ({field}); available: {', '.join(names) or 'none'}",
            field=field,
            kind=kind.value,
            available=names,
        )
