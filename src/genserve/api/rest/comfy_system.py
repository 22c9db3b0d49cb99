"""ComfyUI's server facts, as its frontend reads them on load: ``/system_stats`` (genserve's real
devices), ``/features``, ``GET /prompt`` (the queue's length), and the lists genserve keeps empty
(``/embeddings``, ``/extensions``: no custom JavaScript, ``/i18n``, ``/workflow_templates``: no
custom nodes' templates), plus the frontend's ``/internal`` routes it calls.

No answer names a server path: ``argv`` is the command, never its arguments, and model folders are
named by the ``models.dir`` setting.
"""

from __future__ import annotations

import asyncio
import os
import sys
from importlib import metadata
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from genserve import __version__
from genserve.api.rest.comfy_models import FOLDERS
from genserve.api.rest.dependencies import ComfyFilesDep, PromptQueueDep
from genserve.models.devices import DeviceInfo, list_devices

router = APIRouter(tags=["comfyui"])

FRONTEND_PACKAGE = "comfyui-frontend-package"
TEMPLATES_PACKAGES = ("comfyui-workflow-templates", "comfyui-workflow-templates-json")


def _version(*packages: str) -> str | None:
    for package in packages:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return None


def _device(info: DeviceInfo) -> dict[str, Any]:
    kind, _, index = info.name.partition(":")
    free = info.free_bytes or 0
    return {
        "name": f"{info.name} {info.description}",
        "type": kind,
        "index": int(index) if index.isdigit() else None,
        "vram_total": info.total_bytes,
        "vram_free": free,
        "torch_vram_total": info.total_bytes,
        "torch_vram_free": free,
    }


@router.get("/system_stats")
async def system_stats() -> dict[str, Any]:
    devices = await asyncio.to_thread(list_devices)
    cpu = next(d for d in devices if d.kind == "cpu")
    frontend = _version(FRONTEND_PACKAGE)
    templates = _version(*TEMPLATES_PACKAGES)
    return {
        "system": {
            "os": os.name,
            "ram_total": cpu.total_bytes,
            "ram_free": cpu.free_bytes or 0,
            "comfyui_version": __version__,
            "required_frontend_version": frontend,
            "installed_templates_version": templates,
            "required_templates_version": templates,
            "python_version": sys.version,
            "pytorch_version": torch.__version__,
            "embedded_python": False,
            # ComfyUI's flag for "no comfy.org API nodes": genserve has none, and the frontend then
            # asks no other host for anything (releases, API node pricing).
            "argv": ["genserve", "serve", "--disable-api-nodes"],
        },
        "devices": [_device(d) for d in devices if d.kind != "cpu"] or [_device(cpu)],
    }


@router.get("/features")
async def features(files: ComfyFilesDep) -> dict[str, Any]:
    # genserve's socket sends no preview images, so it does not offer their metadata.
    return {"supports_preview_metadata": False, "max_upload_size": files.max_upload_bytes}


@router.get("/prompt")
async def get_prompt(executor: PromptQueueDep) -> dict[str, Any]:
    status: dict[str, Any] = executor.status_message()["data"]["status"]
    return status


@router.get("/embeddings")
async def embeddings() -> list[str]:
    return []


@router.get("/extensions")
async def extensions() -> list[str]:
    return []


@router.get("/i18n")
async def i18n() -> dict[str, Any]:
    return {}


@router.get("/workflow_templates")
async def workflow_templates() -> dict[str, Any]:
    return {}


@router.get("/internal/folder_paths")
async def folder_paths() -> dict[str, list[str]]:
    return {name: [f"models.dir/{kind.value}"] if kind else [] for name, kind in FOLDERS.items()}


@router.get("/internal/logs")
async def logs() -> str:
    return ""  # the server's log stays with the operator


@router.get("/internal/logs/raw")
async def raw_logs() -> dict[str, Any]:
    return {"entries": [], "size": {"cols": 80, "rows": 24}}


@router.patch("/internal/logs/subscribe")
async def subscribe_logs(request: Request) -> Response:
    return JSONResponse(None, status_code=200)
