"""Where the bridge's jobs run: this process's own runner, or any server speaking ComfyUI's API.

One small interface (``probe``, ``run``, ``free``) hides which is which, so the balancer and the
queue worker treat a real ComfyUI server, another genserve and the local runner alike. ``run``
sorts every way a job can end into four: outputs (done), ``JobFailed`` (the backend ran it and it
failed: final, the client is told), ``BackendDown`` (the backend could not be reached or went
away: the job goes back to the queue for another backend), ``PromptLost`` (the backend is fine but
no longer has the prompt, which never finished: deleted or cleared there, or forgotten by a
restart). A backend notices a lost prompt by watching its queue while it waits for the prompt's
final message, since a prompt taken out of a queue sends none and would otherwise be waited for
forever. Cancelling the task running ``run`` interrupts that prompt on its backend, and only that
prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve.bridge.progress import FINAL_TYPES, is_final, prompt_of
from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.graph import GraphValidationError
from genserve.workflows.queue import PromptQueue

log = logging.getLogger("genserve.workflows.bridge")

MessageSink = Callable[[dict[str, Any]], None]


class BackendDown(Exception):
    """The backend is unreachable or lost the job; someone else should run it."""


class BackendBusy(BackendDown):
    """The backend is alive but its queue is full; the job waits for room (here or elsewhere)."""


class JobFailed(Exception):
    """The backend ran (or refused) the job and it failed; running it elsewhere would fail too."""


class PromptLost(Exception):
    """The backend answers but no longer has the job's prompt, which did not finish there: it left
    the queue without a history entry. The job may run again; the backend is not at fault."""


@dataclass(frozen=True)
class Output:
    """One file a job produced (a SaveImage image), fetched from its backend."""

    node: str
    filename: str
    data: bytes
    content_type: str = "application/octet-stream"
    metadata: Mapping[str, Any] = field(default_factory=dict)


def output_files(outputs: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(node id, file entry) for every saved file in a ComfyUI history ``outputs`` mapping.

    Only ``type == "output"`` files are results; ``temp`` ones are previews a backend may drop.
    """
    found = []
    for node, produced in outputs.items():
        if not isinstance(produced, Mapping):
            continue
        for key in ("images", "gifs", "videos", "audio"):
            for entry in produced.get(key) or ():
                if isinstance(entry, Mapping) and entry.get("type", "output") == "output":
                    found.append((str(node), dict(entry)))
    return found


def content_type_of(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def describe_execution_error(data: Mapping[str, Any]) -> str:
    """One line for a client from ComfyUI's ``execution_error`` data."""
    node = data.get("node_id") or "?"
    kind = data.get("node_type") or "node"
    message = data.get("exception_message") or data.get("exception_type") or "failed"
    return f"node {node} ({kind}): {str(message).strip()}"


class Backend(ABC):
    """A place to run API-format graphs; ``name`` comes from the config and is unique."""

    def __init__(self, name: str, max_inflight: int) -> None:
        self.name = name
        self.max_inflight = max_inflight

    @abstractmethod
    async def probe(self) -> int:
        """Prompts queued or running there now; raises BackendDown when it does not answer."""

    @abstractmethod
    async def run(self, graph: Mapping[str, Any], job_id: str, on_message: MessageSink) -> list[Output]:
        """Run one graph to its end, passing its ComfyUI messages to ``on_message``."""

    @abstractmethod
    async def free(self) -> None:
        """Unload models and free memory there (ComfyUI's ``POST /free``)."""

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to close
        """Release connections."""


class LocalBackend(Backend):
    """genserve's own runner in this process, through its ComfyUI prompt queue (no HTTP hop).

    Prompts are submitted ``private``, so ComfyUI's API neither lists, clears, deletes nor
    interrupts them. Outputs are read from the runner's output folder and then deleted together
    with the history entry: the bridge keeps its own copy until ``/history`` hands it out, so
    nothing lingers here. An interrupted prompt's entry is written only when the prompt has
    actually stopped, so it is deleted then, by a task that waits for that (``_forget_when_ended``).
    Every ``watch_interval_s`` without news the prompt is looked for in the queue (``_final``).
    """

    def __init__(
        self, name: str, max_inflight: int, executor: PromptQueue, *, watch_interval_s: float = 1.0
    ) -> None:
        super().__init__(name, max_inflight)
        self.executor = executor
        self.watch_interval_s = watch_interval_s
        self._cleanups: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """The history is this process's memory: what is left to delete goes with it."""
        for task in list(self._cleanups):
            task.cancel()

    async def probe(self) -> int:
        if not self.executor.running:
            raise BackendDown(f"{self.name}: the local runner is not running")
        return self.executor.queue_remaining()

    async def free(self) -> None:
        await asyncio.to_thread(self.executor.free, True, True)

    async def run(self, graph: Mapping[str, Any], job_id: str, on_message: MessageSink) -> list[Output]:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[dict[str, Any]] = loop.create_future()

        def deliver(message: dict[str, Any]) -> None:
            # Queue status broadcasts concern every client; after its final word a prompt has
            # nothing more to report (ComfyUI still sends ``executing {node: null}``).
            if prompt_of(message) is None or ended.done():
                return
            on_message(message)
            if is_final(message) and not ended.done():
                ended.set_result(message)

        # The job id is the prompt's client id: every message this listener gets is this job's.
        remove = self.executor.add_listener(job_id, lambda m: loop.call_soon_threadsafe(deliver, m))
        prompt_id: str | None = None
        try:
            try:
                prompt_id, _ = await asyncio.to_thread(self.executor.submit, graph, job_id, private=True)
            except GraphValidationError as exc:
                raise JobFailed(f"{self.name} refused the workflow: {exc.message}") from None
            except GenserveError as exc:
                if exc.code is ErrorCode.RESOURCE_EXHAUSTED:
                    raise BackendBusy(f"{self.name}: {exc.message}") from None
                raise JobFailed(exc.message) from None
            final = await self._final(prompt_id, ended)
        except asyncio.CancelledError:
            if prompt_id is not None:
                self.executor.delete_queued([prompt_id], include_private=True)
                self.executor.interrupt(prompt_id, include_private=True)
                task = asyncio.get_running_loop().create_task(self._forget_when_ended(prompt_id))
                self._cleanups.add(task)
                task.add_done_callback(self._cleanups.discard)
            raise
        finally:
            remove()
        await self._ended(prompt_id)  # the final message comes just before the history entry
        return await asyncio.to_thread(self._collect, prompt_id, final)

    async def _final(self, prompt_id: str, ended: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        """The prompt's final message. A prompt that left the queue without one either ran (its
        message is on its way, or its history entry tells how it ended) or was taken out before
        it ran: ``PromptLost``."""
        while True:
            done, _ = await asyncio.wait({ended}, timeout=self.watch_interval_s)
            if done:
                return ended.result()
            if self.executor.in_queue(prompt_id):
                continue
            with contextlib.suppress(TimeoutError):  # the loop may still hold the final message
                return await asyncio.wait_for(asyncio.shield(ended), self.watch_interval_s)
            entry = self.executor.history(prompt_id, include_private=True).get(prompt_id)
            if entry is None:
                raise PromptLost(f"{self.name}: prompt {prompt_id} left the queue before it ran to its end")
            return _final_of(prompt_id, entry)

    async def _ended(self, prompt_id: str, poll_s: float = 0.01) -> None:
        while self.executor.in_queue(prompt_id):
            await asyncio.sleep(poll_s)

    async def _forget_when_ended(self, prompt_id: str) -> None:
        """Delete an interrupted prompt's history entry once the prompt has stopped and written it."""
        await self._ended(prompt_id, poll_s=0.1)  # a node may take a while to notice the interrupt
        self.executor.delete_history([prompt_id], include_private=True)

    def _collect(self, prompt_id: str, final: dict[str, Any]) -> list[Output]:
        entry = self.executor.history(prompt_id, include_private=True).get(prompt_id, {})
        self.executor.delete_history([prompt_id], include_private=True)
        base = self.executor.resources.output_dir or self.executor.resources.sandbox.default_output_dir
        files = output_files(entry.get("outputs", {}))
        outputs = []
        for node, item in files:
            path = Path(base) / str(item.get("subfolder") or "") / str(item["filename"])
            with contextlib.suppress(FileNotFoundError):
                outputs.append(Output(node, path.name, path.read_bytes(), content_type_of(path.name), item))
                path.unlink()
        if final.get("type") == "execution_error":
            raise JobFailed(describe_execution_error(final.get("data", {})))
        if final.get("type") == "execution_interrupted":
            raise JobFailed(f"interrupted on {self.name}")
        return outputs


def _final_of(prompt_id: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The final message a history entry records (its ``status.messages``), for a prompt whose
    message was not seen; an entry without one that did not complete counts as an error."""
    status = entry.get("status") or {}
    for kind, data in reversed(status.get("messages") or []):
        if kind in FINAL_TYPES:
            return {"type": kind, "data": data}
    if status.get("completed"):
        return {"type": "execution_success", "data": {"prompt_id": prompt_id}}
    return {
        "type": "execution_error",
        "data": {"prompt_id": prompt_id, "exception_message": "did not complete"},
    }
