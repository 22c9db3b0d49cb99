"""What the REST routes depend on, stored once per app, and the typed accessors routes reach it by.

``build_app`` builds one frozen ``RestParts`` and stores it on ``app.state``; this module is the
only code that reads it back. Routes declare what they need with the ``...Dep`` aliases below
(FastAPI ``Depends`` over a small accessor), so the routers are plain module-level objects that any
app can include, and each app serves its own runtime. Accessors take an ``HTTPConnection``, so one
accessor serves HTTP and WebSocket routes alike. A router is only included when its parts were
given, so an accessor that finds its part missing is a wiring bug, never a client's error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import Depends, FastAPI
from starlette.requests import HTTPConnection

from genserve.api.rest.metrics import ServerMetrics
from genserve.auth.guard import Guard
from genserve.bridge.aliases import WorkflowCatalog
from genserve.bridge.dispatcher import Bridge
from genserve.config import ServerSettings
from genserve.engine.engine import Engine
from genserve.engine.runtime import Runtime
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind
from genserve.storage.owners import ClientOwners
from genserve.storage.userdata import UserFiles
from genserve.workflows.queue import PromptQueue

T = TypeVar("T")


@dataclass(frozen=True)
class ComfyFiles:
    """The folders ComfyUI's file routes may touch, by ``/view``'s ``type`` (``input``, ``output``),
    and the largest ``/upload/image`` body."""

    folders: Mapping[str, Path]
    max_upload_bytes: int


@dataclass(frozen=True)
class BridgeLimits:
    """``upload_dir`` is the workflows input folder: ``/upload`` stores into its ``bridge-uploads/``
    subfolder, where LoadImage finds the files and other clients do not. A socket with nothing to
    say hears ``listening`` every ``listening_interval_s``."""

    upload_dir: Path
    max_file_bytes: int
    max_files: int
    listening_interval_s: float


@dataclass(frozen=True)
class ComfyUi:
    """What only the ComfyUI listener serves: the web UI's per-user store, the frontend's static
    build and the official workflow templates (each None when its package is not installed)."""

    users: UserFiles
    frontend_dir: Path | None = None
    templates_dir: Path | None = None


@dataclass(frozen=True)
class RestParts:
    """Everything one app's routes use. The ComfyUI parts are set when it serves ComfyUI's API,
    the bridge parts when it serves the bridge's."""

    runtime: Runtime
    metrics: ServerMetrics
    # The pipeline defaults that name a model: setting key -> (kind, name).
    configured_models: Mapping[str, tuple[ModelKind, str]]
    prompts: PromptQueue | None = None
    comfy_files: ComfyFiles | None = None
    bridge: Bridge | None = None
    catalog: WorkflowCatalog | None = None
    bridge_limits: BridgeLimits | None = None
    guard: Guard = field(default_factory=lambda: Guard(None))  # no keys: open
    client_owners: ClientOwners | None = None  # which key owns each bridge clientId
    comfy_ui: ComfyUi | None = None  # on the ComfyUI listener only


def store_parts(app: FastAPI, parts: RestParts) -> None:
    app.state.rest_parts = parts


def parts_of(app: FastAPI) -> RestParts:
    parts = app.state.rest_parts
    assert isinstance(parts, RestParts)
    return parts


def _served(part: T | None, what: str) -> T:
    if part is None:
        raise RuntimeError(f"{what} is not served by this app, yet one of its routes was called")
    return part


def rest_parts(conn: HTTPConnection) -> RestParts:
    return parts_of(conn.app)


def engine(conn: HTTPConnection) -> Engine:
    return rest_parts(conn).runtime.engine


def model_manager(conn: HTTPConnection) -> ModelManager:
    return rest_parts(conn).runtime.models


def server_settings(conn: HTTPConnection) -> ServerSettings:
    return rest_parts(conn).runtime.settings.server


def server_metrics(conn: HTTPConnection) -> ServerMetrics:
    return rest_parts(conn).metrics


def configured_models(conn: HTTPConnection) -> Mapping[str, tuple[ModelKind, str]]:
    return rest_parts(conn).configured_models


def prompt_queue(conn: HTTPConnection) -> PromptQueue:
    return _served(rest_parts(conn).prompts, "ComfyUI's prompt queue")


def comfy_files(conn: HTTPConnection) -> ComfyFiles:
    return _served(rest_parts(conn).comfy_files, "ComfyUI's file routes")


def comfy_ui(conn: HTTPConnection) -> ComfyUi:
    return _served(rest_parts(conn).comfy_ui, "The ComfyUI web UI")


def bridge(conn: HTTPConnection) -> Bridge:
    return _served(rest_parts(conn).bridge, "The workflow bridge")


def workflow_catalog(conn: HTTPConnection) -> WorkflowCatalog:
    return _served(rest_parts(conn).catalog, "The bridge's workflow catalog")


def bridge_limits(conn: HTTPConnection) -> BridgeLimits:
    return _served(rest_parts(conn).bridge_limits, "The bridge's limits")


EngineDep = Annotated[Engine, Depends(engine)]
ModelManagerDep = Annotated[ModelManager, Depends(model_manager)]
ServerSettingsDep = Annotated[ServerSettings, Depends(server_settings)]
MetricsDep = Annotated[ServerMetrics, Depends(server_metrics)]
ConfiguredModelsDep = Annotated[Mapping[str, tuple[ModelKind, str]], Depends(configured_models)]
PromptQueueDep = Annotated[PromptQueue, Depends(prompt_queue)]
ComfyFilesDep = Annotated[ComfyFiles, Depends(comfy_files)]
ComfyUiDep = Annotated[ComfyUi, Depends(comfy_ui)]
BridgeDep = Annotated[Bridge, Depends(bridge)]
CatalogDep = Annotated[WorkflowCatalog, Depends(workflow_catalog)]
BridgeLimitsDep = Annotated[BridgeLimits, Depends(bridge_limits)]
