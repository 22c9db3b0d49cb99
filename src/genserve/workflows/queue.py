"""ComfyUI's prompt queue, run as engine work on the workflow lane: one prompt at a time.

ComfyUI runs prompts one after another (one GPU, one output cache shared by consecutive runs), so
the lane has one worker. ``submit`` validates first (a bad graph never waits in the queue), then
admits the prompt to the engine as a job: the engine's lane keeps the order, its queue limit
refuses past ``workflows.queue_size``, its observers and metrics count every prompt, and a job
can be listed and deleted by id while it waits, as ``/queue`` needs. This module adds what is
ComfyUI's own: fanning the runner's events out to the listeners of the prompt's client (a
prompt without a client is broadcast, as ComfyUI does), broadcasting ``status`` (queue length)
whenever the queue changes, and a bounded history in ComfyUI's shape, so clients that missed
the socket messages can still read results.

A prompt submitted ``private`` (the workflow bridge's, which follows it to its end and collects it
itself) runs like any other but is invisible to ComfyUI's API: ``queue``, ``history``,
``delete_queued``, ``delete_history`` and ``interrupt`` skip it unless their caller passes
``include_private``. Otherwise any ComfyUI client could list another client's bridge job, clear it
from the queue (leaving the bridge waiting for a prompt that will never run), interrupt it, or
delete its history entry before the bridge collected its outputs. With API keys, each of those
also shows a ``viewer`` only its own prompts (owners.py), and a confined key's prompt runs with
its files kept to its own folders.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict

from genserve.auth.principal import Principal
from genserve.engine.engine import Engine
from genserve.engine.jobs import Job
from genserve.errors import ErrorCode, GenserveError, as_genserve_error
from genserve.services.base import RunContext, Service, ServiceModel
from genserve.workflows.events import EventType, Executing, WorkflowEvent
from genserve.workflows.graph import Graph
from genserve.workflows.history import PromptHistory
from genserve.workflows.nodes.values import PipelineResources
from genserve.workflows.owners import ClientClaims, check_reachable, confinement, sees
from genserve.workflows.runner import WorkflowRunner

log = logging.getLogger("genserve.workflows.queue")

LANE = "workflows"
Listener = Callable[[dict[str, Any]], None]
# The events ComfyUI keeps in a history entry's status.messages.
_HISTORY_EVENTS = {
    EventType.EXECUTION_START,
    EventType.EXECUTION_CACHED,
    EventType.EXECUTION_SUCCESS,
    EventType.EXECUTION_ERROR,
    EventType.EXECUTION_INTERRUPTED,
}


@dataclass
class PromptItem:
    """A queued or running prompt; ``entry()`` is ComfyUI's queue/history ``prompt`` list."""

    number: int
    prompt_id: str
    prompt: dict[str, Any]
    client_id: str | None
    graph: Graph
    extra: dict[str, Any] = field(default_factory=dict)
    private: bool = False
    owner: str | None = None  # the submitting key's id; None without keys
    confined: str | None = None  # the key id its files are kept to (owners.confinement)

    def entry(self) -> list[Any]:
        outputs = [n for n in self.graph.order if self.graph.nodes[n].node_type.output_node]
        return [
            self.number,
            self.prompt_id,
            self.prompt,
            {**self.extra, "client_id": self.client_id},
            outputs,
        ]


class PromptJob(ServiceModel):
    """The engine's request for one prompt: the validated item, as it waits in the lane."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    item: PromptItem


class PromptOutcome(ServiceModel):
    status: str  # ComfyUI's status_str: success or error


class PromptQueue:
    """The prompt queue: submit, queue, history, interrupt, delete, free, and event listeners.

    ``resources`` is handed to every run (PipelineResources); ``unload_models`` is what
    ``free(unload_models=True)`` calls (the runtime's model manager), kept as a callable so this
    module needs no runtime.
    """

    def __init__(
        self,
        engine: Engine,
        runner: WorkflowRunner,
        resources: Any,
        *,
        lane: str = LANE,
        history_size: int = 1000,
        unload_models: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.runner = runner
        self.resources = resources
        self.lane = lane
        self.history_size = history_size
        self._unload_models = unload_models
        self.service: Service[PromptJob, PromptOutcome] = Service(
            "workflow", PromptJob, PromptOutcome, self._run_job, "A ComfyUI prompt (API format).", lane
        )
        self._lock = threading.Lock()
        self._history = PromptHistory(history_size)
        self.claims = ClientClaims()
        # Listeners by client id, each with the key that registered it (its owner's broadcasts).
        self._listeners: dict[str | None, list[tuple[Listener, str | None]]] = {}
        self._numbers = itertools.count()
        self._accepting = False

    # Lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Take prompts, after emptying the temp folder of earlier sessions' previews (ComfyUI
        does so at start-up; nothing else removes them)."""
        if isinstance(self.resources, PipelineResources):
            self.resources.clear_temp()
        self._accepting = True

    def stop(self, timeout: float | None = 30.0) -> None:
        """Drop waiting prompts, interrupt the running one, and wait for it to end.

        Interrupting (rather than finishing) keeps a graceful stop bounded: a workflow may sample
        for minutes, and its client sees ``execution_interrupted`` instead of a silent cut.
        """
        self._accepting = False
        jobs = self.engine.jobs(self.lane)
        self.engine.remove([job.id for job in jobs if not job.running])
        running = [job for job in jobs if job.running]
        for job in running:
            job.cancel.set()
        for job in running:
            try:
                job.future.exception(timeout)
            except Exception:  # still running past the timeout, or cancelled: the engine closes it
                log.debug("prompt %s still running at stop", job.id, exc_info=True)

    @property
    def running(self) -> bool:
        """Whether the queue takes prompts."""
        return self._accepting and self.engine.accepting

    # Listeners ---------------------------------------------------------------------------------

    def add_listener(
        self, client_id: str | None, listener: Listener, viewer: Principal | None = None
    ) -> Callable[[], None]:
        """Receive the messages of ``client_id``'s prompts and the broadcasts ``viewer`` may hear;
        returns the remover. A client id another key holds is refused (PERMISSION_DENIED)."""
        self.claims.claim(client_id, viewer)
        entry = (listener, viewer.owner if viewer is not None and not viewer.admin else None)
        with self._lock:
            self._listeners.setdefault(client_id, []).append(entry)

        def remove() -> None:
            with self._lock:
                found = self._listeners.get(client_id, [])
                if entry in found:
                    found.remove(entry)
                if not found:
                    self._listeners.pop(client_id, None)

        return remove

    def _send(self, message: dict[str, Any], client_id: str | None, owner: str | None = None) -> None:
        """To one client's listeners, or when ``client_id`` is None (ComfyUI's sid=None) to everyone
        who may hear ``owner``'s prompts (all, for the queue's own status)."""
        with self._lock:
            if client_id is None:
                everyone = [entry for entries in self._listeners.values() for entry in entries]
                targets = [fn for fn, heard in everyone if owner is None or heard in (None, owner)]
            else:
                targets = [fn for fn, _ in self._listeners.get(client_id, [])]
        for listener in targets:
            try:
                listener(message)
            except Exception:  # a closed socket must not stop the queue
                log.debug("a workflow listener failed", exc_info=True)

    def status_message(self) -> dict[str, Any]:
        return {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}},
        }

    def _broadcast_status(self) -> None:
        self._send(self.status_message(), None)

    # Queue -------------------------------------------------------------------------------------

    def queue_remaining(self) -> int:
        return len(self.engine.jobs(self.lane))

    def submit(
        self,
        prompt: Mapping[str, Any],
        client_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        *,
        private: bool = False,
        owner: Principal | None = None,
    ) -> tuple[str, int]:
        """Validate and queue; raises GraphValidationError (its ``problems`` give node_errors), or
        RESOURCE_EXHAUSTED when the queue is full or not running. A ``private`` prompt is hidden
        from ComfyUI's API (see the module's docstring); ``owner`` is the caller, with keys."""
        self.claims.claim(client_id, owner)
        graph = self.runner.validate(prompt)
        check_reachable(prompt, confinement(owner))
        if not self.running:
            raise GenserveError(ErrorCode.RESOURCE_EXHAUSTED, "the workflow queue is not running")
        item = PromptItem(
            next(self._numbers), uuid.uuid4().hex, dict(prompt), client_id, graph, dict(extra or {}), private
        )
        item.owner, item.confined = (owner.owner if owner else None), confinement(owner)
        try:
            self.engine.enqueue(self.service, PromptJob(item=item), job_id=item.prompt_id)
        except GenserveError as exc:
            if exc.code is ErrorCode.RESOURCE_EXHAUSTED:
                waiting = exc.details.get("waiting", "?")
                raise GenserveError(exc.code, f"the workflow queue is full ({waiting} waiting)") from None
            raise
        self._broadcast_status()
        return item.prompt_id, item.number

    def in_queue(self, prompt_id: str) -> bool:
        """Whether the prompt waits or runs. Its history entry is written before it leaves the
        queue, so once this is False the entry is there to read or delete (unless never run)."""
        return self.engine.job(prompt_id) is not None

    def _jobs(self, include_private: bool, viewer: Principal | None = None) -> list[Job]:
        return [
            job
            for job in self.engine.jobs(self.lane)
            if (include_private or not _item(job).private) and sees(viewer, _item(job).owner)
        ]

    def queue(
        self, *, include_private: bool = False, viewer: Principal | None = None
    ) -> dict[str, list[list[Any]]]:
        """ComfyUI's ``GET /queue``."""
        jobs = self._jobs(include_private, viewer)
        return {
            "queue_running": [_item(j).entry() for j in jobs if j.running],
            "queue_pending": [_item(j).entry() for j in jobs if not j.running],
        }

    def delete_queued(
        self,
        prompt_ids: list[str] | None = None,
        *,
        include_private: bool = False,
        viewer: Principal | None = None,
    ) -> int:
        """Remove waiting prompts by id (None: all of them); a running prompt is left to interrupt()."""
        waiting = [j.id for j in self._jobs(include_private, viewer) if not j.running]
        chosen = waiting if prompt_ids is None else [i for i in waiting if i in set(prompt_ids)]
        return len(self.engine.remove(chosen))  # each removal broadcasts the new queue length

    def interrupt(
        self, prompt_id: str | None = None, *, include_private: bool = False, viewer: Principal | None = None
    ) -> bool:
        """Interrupt the running prompt (only if it is ``prompt_id``, when given, and ``viewer``'s)."""
        for job in self._jobs(include_private, viewer):
            if job.running and (prompt_id is None or job.id == prompt_id):
                job.cancel.set()
                return True
        return False

    # History -----------------------------------------------------------------------------------

    def history(
        self,
        prompt_id: str | None = None,
        max_items: int | None = None,
        *,
        include_private: bool = False,
        viewer: Principal | None = None,
    ) -> dict[str, Any]:
        """ComfyUI's history: every finished prompt (newest last), or just ``prompt_id`` ({} if unknown)."""
        return self._history.read(prompt_id, max_items, include_private=include_private, viewer=viewer)

    def delete_history(
        self,
        prompt_ids: list[str] | None = None,
        *,
        include_private: bool = False,
        viewer: Principal | None = None,
    ) -> None:
        self._history.delete(prompt_ids, include_private=include_private, viewer=viewer)

    def free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        """ComfyUI's ``POST /free``: forget cached node results, optionally unload every model."""
        if unload_models or free_memory:
            self.runner.cache.clear()
        if unload_models and self._unload_models is not None:
            self._unload_models()
        if free_memory:
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # freeing is best effort
                log.debug("could not empty the CUDA cache", exc_info=True)

    # The run, on the lane's worker ----------------------------------------------------------------

    def _run_job(self, job: PromptJob, ctx: RunContext) -> PromptOutcome:
        self._broadcast_status()  # one fewer waiting, one running
        return self._run(job.item, ctx.cancel_event)

    def _run(self, item: PromptItem, cancel: threading.Event) -> PromptOutcome:
        messages: list[list[Any]] = []
        closing: list[WorkflowEvent] = []

        def on_event(event: WorkflowEvent) -> None:
            if event.type in _HISTORY_EVENTS:
                messages.append([event.type.value, event.data()])
            if isinstance(event, Executing) and event.node is None:
                # Clients read /history as soon as they see this; ComfyUI's worker writes the
                # entry first, so it is held back until the entry is in place.
                closing.append(event)
                return
            self._send(event.to_message(), item.client_id, item.owner)

        outputs: dict[str, Any] = {}
        failure: GenserveError | None = None
        try:
            result = self.runner.run(
                item.graph,
                prompt_id=item.prompt_id,
                on_event=on_event,
                cancel_event=cancel,
                resources=self._resources_for(item),
                prompt=item.prompt,
                extra_pnginfo=item.extra.get("extra_pnginfo")
                if isinstance(item.extra.get("extra_pnginfo"), dict)
                else None,
            )
            outputs = result.outputs
        except Exception as exc:  # the runner already sent execution_error / _interrupted
            failure = as_genserve_error(exc)
            log.info("prompt %s did not finish: %s", item.prompt_id, exc)
        status = "success" if failure is None else "error"
        entry = {
            "prompt": item.entry(),
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {node: {"node_id": node, "display_node": node} for node in outputs},
        }
        self._history.add(item.prompt_id, entry, item.owner, item.private)
        for event in closing:
            self._send(event.to_message(), item.client_id, item.owner)
        if failure is not None:
            raise failure  # so the engine counts the prompt's real outcome
        return PromptOutcome(status=status)

    def _resources_for(self, item: PromptItem) -> Any:
        """The run's resources: a confined key's prompt reads and writes in its own folders; a
        private (bridge) prompt, whose files the bridge collects and deletes, writes its own."""
        if not dataclasses.is_dataclass(self.resources):
            return self.resources
        fields = {f.name for f in dataclasses.fields(self.resources)}
        wanted = {"confined": item.confined, "own_outputs": item.private or None}
        changes = {k: v for k, v in wanted.items() if v is not None and k in fields}
        return dataclasses.replace(self.resources, **changes) if changes else self.resources  # type: ignore[type-var]


def _item(job: Job) -> PromptItem:
    return job.request.item  # type: ignore[no-any-return]
