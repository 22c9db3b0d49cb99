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
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict

from genserve.engine.engine import Engine
from genserve.errors import ErrorCode, GenserveError, as_genserve_error
from genserve.services.base import RunContext, Service, ServiceModel
from genserve.workflows.events import EventType, Executing, WorkflowEvent
from genserve.workflows.graph import Graph
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
        self._history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._listeners: dict[str | None, list[Listener]] = {}
        self._numbers = itertools.count()
        self._accepting = False

    # Lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
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

    def add_listener(self, client_id: str | None, listener: Listener) -> Callable[[], None]:
        """Receive the messages of ``client_id``'s prompts and every broadcast; returns the remover."""
        with self._lock:
            self._listeners.setdefault(client_id, []).append(listener)

        def remove() -> None:
            with self._lock:
                found = self._listeners.get(client_id, [])
                if listener in found:
                    found.remove(listener)
                if not found:
                    self._listeners.pop(client_id, None)

        return remove

    def _send(self, message: dict[str, Any], client_id: str | None) -> None:
        """To one client's listeners, or to everyone when ``client_id`` is None (ComfyUI's sid=None)."""
        with self._lock:
            if client_id is None:
                targets = [fn for fns in self._listeners.values() for fn in fns]
            else:
                targets = list(self._listeners.get(client_id, []))
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
        self, prompt: Mapping[str, Any], client_id: str | None = None, extra: Mapping[str, Any] | None = None
    ) -> tuple[str, int]:
        """Validate and queue; raises GraphValidationError (its ``problems`` give node_errors), or
        RESOURCE_EXHAUSTED when the queue is full or not running."""
        graph = self.runner.validate(prompt)
        if not self.running:
            raise GenserveError(ErrorCode.RESOURCE_EXHAUSTED, "the workflow queue is not running")
        item = PromptItem(
            next(self._numbers), uuid.uuid4().hex, dict(prompt), client_id, graph, dict(extra or {})
        )
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

    def queue(self) -> dict[str, list[list[Any]]]:
        """ComfyUI's ``GET /queue``."""
        jobs = self.engine.jobs(self.lane)
        return {
            "queue_running": [_item(j).entry() for j in jobs if j.running],
            "queue_pending": [_item(j).entry() for j in jobs if not j.running],
        }

    def delete_queued(self, prompt_ids: list[str] | None = None) -> int:
        """Remove waiting prompts by id (None: all of them); a running prompt is left to interrupt()."""
        waiting = [j.id for j in self.engine.jobs(self.lane) if not j.running]
        chosen = waiting if prompt_ids is None else [i for i in waiting if i in set(prompt_ids)]
        return len(self.engine.remove(chosen))  # each removal broadcasts the new queue length

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is ``prompt_id``, when given)."""
        for job in self.engine.jobs(self.lane):
            if job.running and (prompt_id is None or job.id == prompt_id):
                job.cancel.set()
                return True
        return False

    # History -----------------------------------------------------------------------------------

    def history(self, prompt_id: str | None = None, max_items: int | None = None) -> dict[str, Any]:
        """ComfyUI's history: every finished prompt (newest last), or just ``prompt_id`` ({} if unknown)."""
        with self._lock:
            if prompt_id is not None:
                found = self._history.get(prompt_id)
                return {prompt_id: found} if found is not None else {}
            items = list(self._history.items())
        if max_items is not None:
            items = items[-max_items:] if max_items > 0 else []
        return dict(items)

    def delete_history(self, prompt_ids: list[str] | None = None) -> None:
        with self._lock:
            if prompt_ids is None:
                self._history.clear()
            for prompt_id in prompt_ids or ():
                self._history.pop(prompt_id, None)

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
            self._send(event.to_message(), item.client_id)

        outputs: dict[str, Any] = {}
        failure: GenserveError | None = None
        try:
            result = self.runner.run(
                item.graph,
                prompt_id=item.prompt_id,
                on_event=on_event,
                cancel_event=cancel,
                resources=self.resources,
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
        with self._lock:
            self._history[item.prompt_id] = entry
            while len(self._history) > self.history_size:
                self._history.popitem(last=False)
        for event in closing:
            self._send(event.to_message(), item.client_id)
        if failure is not None:
            raise failure  # so the engine counts the prompt's real outcome
        return PromptOutcome(status=status)


def _item(job: Any) -> PromptItem:
    return job.request.item  # type: ignore[no-any-return]
