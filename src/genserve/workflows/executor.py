"""ComfyUI's prompt queue over the native runner: one worker thread, one prompt at a time.

ComfyUI runs prompts one after another (one GPU, one output cache shared by consecutive runs), so
this keeps that contract: ``submit`` validates first (a bad graph never waits in the queue), then
the worker runs prompts in order, fanning the runner's events out to the listeners of the
prompt's client (a prompt without a client is broadcast, as ComfyUI does) and broadcasting
``status`` (queue length) whenever the queue changes. Finished prompts are kept in a bounded
history in ComfyUI's shape, so clients that missed the socket messages can still read results.
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

from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.events import EventType, Executing, WorkflowEvent
from genserve.workflows.graph import Graph
from genserve.workflows.runner import WorkflowRunner

log = logging.getLogger("genserve.workflows.executor")

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
    cancel: threading.Event = field(default_factory=threading.Event)

    def entry(self) -> list[Any]:
        outputs = [n for n in self.graph.order if self.graph.nodes[n].node_type.output_node]
        return [
            self.number,
            self.prompt_id,
            self.prompt,
            {**self.extra, "client_id": self.client_id},
            outputs,
        ]


class WorkflowExecutor:
    """The prompt queue: submit, queue, history, interrupt, delete, free, and event listeners.

    ``resources`` is handed to every run (PipelineResources); ``unload_models`` is what
    ``free(unload_models=True)`` calls (the runtime's model manager), kept as a callable so this
    module needs no runtime.
    """

    def __init__(
        self,
        runner: WorkflowRunner,
        resources: Any,
        *,
        queue_size: int = 64,
        history_size: int = 1000,
        unload_models: Callable[[], None] | None = None,
    ) -> None:
        self.runner = runner
        self.resources = resources
        self.queue_size = queue_size
        self.history_size = history_size
        self._unload_models = unload_models
        self._cond = threading.Condition()
        self._pending: list[PromptItem] = []
        self._running: PromptItem | None = None
        self._history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._listeners: dict[str | None, list[Listener]] = {}
        self._numbers = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # Lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="workflow-executor", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Drop waiting prompts, interrupt the running one, and wait for the worker to leave.

        Interrupting (rather than finishing) keeps a graceful stop bounded: a workflow may sample
        for minutes, and its client sees ``execution_interrupted`` instead of a silent cut.
        """
        with self._cond:
            self._stopping = True
            self._pending.clear()
            if self._running is not None:
                self._running.cancel.set()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the worker is up and taking prompts."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping

    # Listeners ---------------------------------------------------------------------------------

    def add_listener(self, client_id: str | None, listener: Listener) -> Callable[[], None]:
        """Receive the messages of ``client_id``'s prompts and every broadcast; returns the remover."""
        with self._cond:
            self._listeners.setdefault(client_id, []).append(listener)

        def remove() -> None:
            with self._cond:
                found = self._listeners.get(client_id, [])
                if listener in found:
                    found.remove(listener)
                if not found:
                    self._listeners.pop(client_id, None)

        return remove

    def _send(self, message: dict[str, Any], client_id: str | None) -> None:
        """To one client's listeners, or to everyone when ``client_id`` is None (ComfyUI's sid=None)."""
        with self._cond:
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
        with self._cond:
            return len(self._pending) + (1 if self._running is not None else 0)

    def submit(
        self, prompt: Mapping[str, Any], client_id: str | None = None, extra: Mapping[str, Any] | None = None
    ) -> tuple[str, int]:
        """Validate and queue; raises GraphValidationError (its ``problems`` give node_errors), or
        RESOURCE_EXHAUSTED when the queue is full or not running."""
        graph = self.runner.validate(prompt)
        with self._cond:
            if self._stopping or self._thread is None:
                raise GenserveError(ErrorCode.RESOURCE_EXHAUSTED, "the workflow queue is not running")
            if len(self._pending) >= self.queue_size:
                raise GenserveError(
                    ErrorCode.RESOURCE_EXHAUSTED, f"the workflow queue is full ({self.queue_size} waiting)"
                )
            item = PromptItem(
                next(self._numbers), uuid.uuid4().hex, dict(prompt), client_id, graph, dict(extra or {})
            )
            self._pending.append(item)
            self._cond.notify_all()
        self._broadcast_status()
        return item.prompt_id, item.number

    def in_queue(self, prompt_id: str) -> bool:
        """Whether the prompt waits or runs. Its history entry is written before it leaves the
        queue, so once this is False the entry is there to read or delete (unless never run)."""
        with self._cond:
            running = self._running is not None and self._running.prompt_id == prompt_id
            return running or any(p.prompt_id == prompt_id for p in self._pending)

    def queue(self) -> dict[str, list[list[Any]]]:
        """ComfyUI's ``GET /queue``."""
        with self._cond:
            running = [self._running.entry()] if self._running is not None else []
            return {"queue_running": running, "queue_pending": [p.entry() for p in self._pending]}

    def delete_queued(self, prompt_ids: list[str] | None = None) -> int:
        """Remove waiting prompts by id (None: all of them); a running prompt is left to interrupt()."""
        with self._cond:
            before = len(self._pending)
            if prompt_ids is None:
                self._pending.clear()
            else:
                self._pending = [p for p in self._pending if p.prompt_id not in set(prompt_ids)]
            removed = before - len(self._pending)
        if removed:
            self._broadcast_status()
        return removed

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is ``prompt_id``, when given)."""
        with self._cond:
            running = self._running
            if running is None or (prompt_id is not None and running.prompt_id != prompt_id):
                return False
            running.cancel.set()
            return True

    # History -----------------------------------------------------------------------------------

    def history(self, prompt_id: str | None = None, max_items: int | None = None) -> dict[str, Any]:
        """ComfyUI's history: every finished prompt (newest last), or just ``prompt_id`` ({} if unknown)."""
        with self._cond:
            if prompt_id is not None:
                found = self._history.get(prompt_id)
                return {prompt_id: found} if found is not None else {}
            items = list(self._history.items())
        if max_items is not None:
            items = items[-max_items:] if max_items > 0 else []
        return dict(items)

    def delete_history(self, prompt_ids: list[str] | None = None) -> None:
        with self._cond:
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

    # Worker ------------------------------------------------------------------------------------

    def _next(self) -> PromptItem | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            self._running = self._pending.pop(0)
            return self._running

    def _work(self) -> None:
        while (item := self._next()) is not None:
            self._broadcast_status()
            try:
                self._run(item)
            finally:
                with self._cond:
                    self._running = None
                self._broadcast_status()

    def _run(self, item: PromptItem) -> None:
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
        status = "success"
        try:
            result = self.runner.run(
                item.graph,
                prompt_id=item.prompt_id,
                on_event=on_event,
                cancel_event=item.cancel,
                resources=self.resources,
            )
            outputs = result.outputs
        except Exception as exc:  # the runner already sent execution_error / _interrupted
            status = "error"
            log.info("prompt %s did not finish: %s", item.prompt_id, exc)
        entry = {
            "prompt": item.entry(),
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {node: {"node_id": node, "display_node": node} for node in outputs},
        }
        with self._cond:
            self._history[item.prompt_id] = entry
            while len(self._history) > self.history_size:
                self._history.popitem(last=False)
        for event in closing:
            self._send(event.to_message(), item.client_id)
