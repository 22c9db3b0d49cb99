"""ComfyUI's model folder routes over genserve's registry: ``/models``, ``/models/{folder}``,
``/experiment/models[/{folder}]`` and ``/view_metadata/{folder}?filename=``.

Folder names are ComfyUI's (``folder_paths``); those genserve keeps (``diffusion_models``,
``text_encoders``, ``vae``, ``loras``) list the registry's models, the others are empty, and
ComfyUI's legacy names (``unet``, ``clip``) answer for their successors.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from genserve.api.rest.dependencies import ModelManagerDep
from genserve.errors import GenserveError
from genserve.models.formats.safetensors_header import read_header
from genserve.models.registry import ModelKind, ModelRegistry, check_model_name
from genserve.workflows.nodes.models import model_names

router = APIRouter(tags=["comfyui"])

FOLDERS: dict[str, ModelKind | None] = {
    "checkpoints": None,
    "loras": ModelKind.LORA,
    "vae": ModelKind.VAE,
    "text_encoders": ModelKind.TEXT_ENCODER,
    "diffusion_models": ModelKind.DIFFUSION,
    "clip_vision": None,
    "style_models": None,
    "embeddings": None,
    "diffusers": None,
    "vae_approx": None,
    "controlnet": ModelKind.CONTROLNET,
    "gligen": None,
    "upscale_models": None,
    "hypernetworks": None,
    "photomaker": None,
    "classifiers": None,
    "model_patches": ModelKind.MODEL_PATCH,
    "audio_encoders": None,
}
LEGACY = {"clip": "text_encoders", "unet": "diffusion_models"}
MAX_HEADER_BYTES = 2**20  # as ComfyUI: a larger safetensors header is not read for its metadata


def _kind(folder: str) -> tuple[bool, ModelKind | None]:
    """Whether ``folder`` is a ComfyUI folder name, and the registry kind behind it."""
    name = LEGACY.get(folder, folder)
    return name in FOLDERS, FOLDERS.get(name)


def _names(registry: ModelRegistry, kind: ModelKind | None) -> list[str]:
    """The names the loader nodes' combos offer (a folder model also as ``name.safetensors``)."""
    return model_names(registry, kind)() if kind is not None else []


def _file_info(registry: ModelRegistry, kind: ModelKind, name: str) -> dict[str, Any] | None:
    path = registry.find(kind, name)
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    size = stat.st_size if path.is_file() else 0
    return {"name": name, "pathIndex": 0, "modified": stat.st_mtime, "created": stat.st_ctime, "size": size}


@router.get("/models")
async def model_folders() -> list[str]:
    return list(FOLDERS)


@router.get("/models/{folder}")
async def models_in(folder: str, manager: ModelManagerDep) -> Response:
    known, kind = _kind(folder)
    if not known:
        return Response(status_code=404)
    return JSONResponse(await asyncio.to_thread(_names, manager.registry, kind))


@router.get("/experiment/models")
async def experiment_folders() -> list[dict[str, Any]]:
    return [
        {"name": name, "folders": [f"models.dir/{kind.value}"] if kind else []}
        for name, kind in FOLDERS.items()
    ]


@router.get("/experiment/models/{folder}")
async def experiment_models(folder: str, manager: ModelManagerDep) -> Response:
    known, kind = _kind(folder)
    if not known:
        return Response(status_code=404)

    def listing() -> list[dict[str, Any]]:
        if kind is None:
            return []
        found = (_file_info(manager.registry, kind, name) for name in _names(manager.registry, kind))
        return [info for info in found if info is not None]

    return JSONResponse(await asyncio.to_thread(listing))


@router.get("/view_metadata/{folder}")
async def view_metadata(folder: str, manager: ModelManagerDep, filename: str = "") -> Response:
    """A safetensors file's ``__metadata__`` (404 when the file, or its metadata, is missing)."""
    known, kind = _kind(folder)
    if not known or kind is None or not filename.endswith(".safetensors") or "/" in filename:
        return Response(status_code=404)

    def metadata() -> dict[str, str] | None:
        try:
            path = manager.registry.find(kind, check_model_name(filename, "filename"))
            if path is None or not path.is_file() or _header_bytes(path) > MAX_HEADER_BYTES:
                return None
            return read_header(path, "filename").metadata or None
        except (GenserveError, OSError, ValueError):
            return None

    found = await asyncio.to_thread(metadata)
    return JSONResponse(found) if found else Response(status_code=404)


def _header_bytes(path: Path) -> int:
    with path.open("rb") as handle:
        return int.from_bytes(handle.read(8), "little")
