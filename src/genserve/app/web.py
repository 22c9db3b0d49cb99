"""The parts behind the REST door's workflow APIs: ComfyUI's prompt queue (on the engine's workflow
lane) and the workflow bridge with its catalog of aliases. Built from the settings here, started
and stopped with the server, and handed to the door, which only translates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from genserve.bridge.admission import QueueLimits
from genserve.bridge.aliases import WorkflowCatalog
from genserve.bridge.backends import Backend, LocalBackend
from genserve.bridge.dispatcher import Bridge
from genserve.bridge.remote import ComfyBackend
from genserve.engine.runtime import Runtime
from genserve.errors import ErrorCode, GenserveError
from genserve.storage.jobs import JobStore
from genserve.storage.owners import ClientOwners
from genserve.workflows.demo import write_demo_catalog
from genserve.workflows.nodes.builtin import PipelineResources, pipeline_registry
from genserve.workflows.nodes.image import BRIDGE_UPLOADS
from genserve.workflows.queue import PromptQueue
from genserve.workflows.runner import WorkflowRunner

log = logging.getLogger("genserve.app")


@dataclass
class WebParts:
    prompts: PromptQueue | None = None
    bridge: Bridge | None = None
    catalog: WorkflowCatalog | None = None
    client_owners: ClientOwners | None = None

    async def start(self) -> None:
        if self.prompts is not None:
            self.prompts.start()
        if self.bridge is not None:
            await self.bridge.start()

    async def stop(self) -> None:
        """The bridge first, so the jobs it was running stay queued for the next start rather than
        failing on the way down; then the prompt queue (its running prompt is interrupted)."""
        if self.bridge is not None:
            await self.bridge.stop()
            self.bridge.store.close()
        if self.client_owners is not None:
            self.client_owners.close()
        if self.prompts is not None:
            await asyncio.to_thread(self.prompts.stop)


def build_web_parts(runtime: Runtime) -> WebParts:
    settings = runtime.settings
    prompts = build_prompt_queue(runtime) if settings.workflows.enabled else None
    if not settings.bridge.enabled:
        return WebParts(prompts)
    bridge, catalog = build_bridge(runtime, prompts)
    return WebParts(prompts, bridge, catalog, ClientOwners(settings.bridge.jobs_db))


def build_prompt_queue(runtime: Runtime) -> PromptQueue:
    """The queue over the runtime's models, its folders checked against the sandbox now, so a
    misplaced folder stops start-up naming the key instead of failing the first prompt."""
    settings = runtime.settings.workflows
    input_dir = settings.input_dir.resolve()
    if not any(_inside(input_dir, root) for root in runtime.sandbox.read_roots):
        raise GenserveError(
            ErrorCode.PERMISSION_DENIED, f"workflows.input_dir {input_dir} is outside storage.read_roots"
        )
    input_dir.mkdir(parents=True, exist_ok=True)
    try:
        output_dir = runtime.sandbox.output_dir(str(settings.output_dir.resolve()), "workflows.output_dir")
    except GenserveError as exc:
        raise GenserveError(exc.code, f"workflows.output_dir: {exc.message}") from None
    runner = WorkflowRunner(pipeline_registry(runtime.models.registry, input_dir), settings.cache_size)
    resources = PipelineResources.from_runtime(runtime, input_dir=input_dir, output_dir=output_dir)

    def unload_models() -> None:
        for stats in runtime.models.loaded():
            with contextlib.suppress(GenserveError):
                runtime.models.unload(stats.kind, stats.name, timeout=60)

    return PromptQueue(runtime.engine, runner, resources, unload_models=unload_models)


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([str(path), str(root)]) == str(root)


def build_bridge(runtime: Runtime, prompts: PromptQueue | None) -> tuple[Bridge, WorkflowCatalog]:
    """The bridge over the configured backends and the catalog; the demo catalog if none exists."""
    settings = runtime.settings.bridge
    if not settings.alias_file.exists():
        written = write_demo_catalog(settings.workflows_dir, settings.alias_file)
        log.warning(
            "bridge.alias_file %s was missing: wrote the demo workflows (%d files)",
            settings.alias_file,
            len(written),
        )
    input_dir = runtime.settings.workflows.input_dir.resolve()
    registry = (
        prompts.runner.registry
        if prompts is not None
        else pipeline_registry(runtime.models.registry, input_dir)
    )
    catalog = WorkflowCatalog(
        settings.workflows_dir, settings.alias_file, registry, foreign_nodes=settings.foreign_nodes
    )
    backends: list[Backend] = []
    for entry in settings.backends:
        if entry.url == "local":
            if prompts is None:
                raise GenserveError(
                    ErrorCode.INVALID_INPUT,
                    f"bridge.backends: {entry.name!r} is local but workflows.enabled is false",
                )
            backends.append(LocalBackend(entry.name, entry.max_inflight, prompts))
        else:
            backends.append(
                ComfyBackend(
                    entry.name,
                    entry.max_inflight,
                    entry.url,
                    input_dir=input_dir,
                    cancel_timeout_s=settings.probe_timeout_s,
                    watch_interval_s=settings.probe_interval_s,
                )
            )
    settings.jobs_db.parent.mkdir(parents=True, exist_ok=True)
    bridge = Bridge(
        JobStore(settings.jobs_db),
        backends,
        results_dir=settings.results_dir.resolve(),
        probe_interval_s=settings.probe_interval_s,
        probe_timeout_s=settings.probe_timeout_s,
        affinity_weight=settings.affinity_weight,
        retention_s=settings.retention_hours * 3600,
        upload_dir=input_dir / BRIDGE_UPLOADS,
        limits=QueueLimits(settings.max_queued_per_client, settings.max_queued, settings.retry_after_s),
    )
    return bridge, catalog
