"""A backend reached over ComfyUI's HTTP and WebSocket API: a real ComfyUI server or another genserve.

It drives the API the way ComfyUI's own client scripts do: upload the input images the graph names,
open ``/ws?clientId=<job id>`` first (so no message is missed), ``POST /prompt``, follow the socket
to the prompt's final message, read ``/history/{id}``, fetch each file with ``/view``, and delete the
history entry (so a backend's history does not grow without end). An
interrupted prompt writes its entry only once it has actually stopped, so that deletion waits for
the prompt to leave the backend's queue (``_forget_when_ended``, in the background).

Input images keep their path relative to the input folder (``bridge-uploads/<name>`` for the
bridge's uploads, sent as ComfyUI's ``subfolder``); when the backend stores one under another name
(a genserve backend does not let an upload replace a different file there), the graph sent names
what it stored.

Connection problems become ``BackendDown`` so the queue worker hands the job to another backend;
a socket that closes early is not trusted either way: the history says whether the prompt
finished. A prompt taken out of the backend's queue (``POST /queue {"clear": true}`` there, or a
restart) sends no final message, so a socket quiet for ``watch_interval_s`` has the backend's
queue looked at: a prompt gone from it is collected from the history, or is ``PromptLost``.
Cancelling (at once, in the background, so neither the socket's closing nor a slow backend cuts
it short) removes the prompt from the backend's queue, or interrupts it only when it is the one
running there (``/interrupt`` without a prompt id would stop another client's job).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from genserve.bridge.backends import (
    Backend,
    BackendBusy,
    BackendDown,
    JobFailed,
    MessageSink,
    Output,
    PromptLost,
    content_type_of,
    describe_execution_error,
    output_files,
)
from genserve.bridge.progress import is_final, prompt_of

log = logging.getLogger("genserve.workflows.bridge")

_NETWORK_ERRORS = (httpx.TransportError, OSError, WebSocketException, asyncio.TimeoutError)


def _ws_url(base: str, client_id: str) -> str:
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path}/ws?clientId={client_id}"


def _refusal(response: httpx.Response) -> str:
    """ComfyUI's 400 for a prompt: ``{"error": {"message"}, "node_errors": {node: {errors: [...]}}}``."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or f"HTTP {response.status_code}"
    parts = []
    for node, found in (body.get("node_errors") or {}).items():
        for error in found.get("errors", []) if isinstance(found, Mapping) else ():
            detail = error.get("details") or error.get("message")
            parts.append(f"node {node} ({found.get('class_type', '?')}): {detail}")
    error = body.get("error")
    head = error.get("message") if isinstance(error, Mapping) else str(error or "refused")
    return head + (": " + "; ".join(parts) if parts else "")


class ComfyBackend(Backend):
    """``url`` is the API's base: ``http://host:8188`` (ComfyUI), ``http://host:8000/comfy`` (genserve)."""

    def __init__(
        self,
        name: str,
        max_inflight: int,
        url: str,
        *,
        input_dir: Path,
        timeout_s: float = 30.0,
        cancel_timeout_s: float = 5.0,
        watch_interval_s: float = 2.0,
    ) -> None:
        super().__init__(name, max_inflight)
        self.url = url.rstrip("/")
        self.input_dir = input_dir
        self.timeout_s = timeout_s
        # A backend being cancelled is often one that stopped answering: give up on it quickly.
        self.cancel_timeout_s = cancel_timeout_s
        self.watch_interval_s = watch_interval_s
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s)
        self._cleanups: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Give pending history deletions a moment (the backend keeps its history), then stop."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=self.cancel_timeout_s)
        for task in list(self._cleanups):
            task.cancel()
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except _NETWORK_ERRORS as exc:
            raise BackendDown(f"{self.name} ({self.url}): {type(exc).__name__}: {exc}") from None
        if response.status_code == 503 and path == "/prompt":  # ComfyUI-API "queue full"
            raise BackendBusy(f"{self.name}: its queue is full")
        if response.status_code >= 500:
            raise BackendDown(f"{self.name}: {method} {path} answered {response.status_code}")
        return response

    async def probe(self) -> int:
        response = await self._call("GET", "/queue")
        try:
            body = response.json()
            return len(body.get("queue_running", [])) + len(body.get("queue_pending", []))
        except (ValueError, AttributeError):
            raise BackendDown(f"{self.name}: GET /queue did not answer ComfyUI's queue") from None

    async def free(self) -> None:
        await self._call("POST", "/free", json={"unload_models": True, "free_memory": True})

    async def run(self, graph: Mapping[str, Any], job_id: str, on_message: MessageSink) -> list[Output]:
        graph = await self._upload_inputs(graph)
        prompt_id: str | None = None
        final: dict[str, Any] | None = None
        vanished = False
        try:
            async with connect(
                _ws_url(self.url, job_id),
                max_size=None,
                open_timeout=self.timeout_s,
                close_timeout=self.cancel_timeout_s,
                proxy=None,
            ) as ws:
                try:
                    response = await self._call(
                        "POST", "/prompt", json={"prompt": graph, "client_id": job_id}
                    )
                    if response.status_code != 200:
                        raise JobFailed(f"{self.name} refused the workflow: {_refusal(response)}")
                    prompt_id = str(response.json()["prompt_id"])
                    final, vanished = await self._follow(ws, prompt_id, on_message)
                except asyncio.CancelledError:
                    if prompt_id is not None:
                        # At once (before the socket's closing handshake) and in the background
                        # with the whole request timeout: a backend busy computing may answer
                        # slowly, and a cancel cut short after the queue deletion but before the
                        # interrupt would leave the prompt running there.
                        self._in_background(self._cancel(prompt_id))
                    raise
        except _NETWORK_ERRORS as exc:
            if prompt_id is None:
                raise BackendDown(f"{self.name} ({self.url}): {type(exc).__name__}: {exc}") from None
            log.info("%s: socket lost during %s (%s); asking its history", self.name, prompt_id, exc)
        if prompt_id is None:
            raise BackendDown(f"{self.name}: the socket closed before the prompt was queued")
        return await self._collect(prompt_id, final, vanished)

    async def _follow(
        self, ws: Any, prompt_id: str, on_message: MessageSink
    ) -> tuple[dict[str, Any] | None, bool]:
        """The prompt's messages to its final one; (that message, or None with whether the prompt
        vanished from the queue when the socket went quiet)."""
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), self.watch_interval_s)
            except TimeoutError:  # quiet: is the prompt still there? (cancelling recv is safe)
                if await self._gone(prompt_id):
                    return None, True
                continue
            if isinstance(raw, bytes):  # preview images; the bridge sends percentages only
                continue
            message = json.loads(raw)
            if prompt_of(message) != prompt_id:
                continue
            on_message(message)
            if is_final(message):
                return message, False

    async def _gone(self, prompt_id: str) -> bool:
        """Whether the prompt has left the backend's queue; an unanswered look says no (the
        prober decides whether the backend is down)."""
        try:
            return prompt_id not in await self._queued()
        except (*_NETWORK_ERRORS, ValueError, AttributeError, TypeError) as exc:
            log.debug("%s: could not look for %s in its queue: %s", self.name, prompt_id, exc)
            return False

    async def _collect(
        self, prompt_id: str, final: dict[str, Any] | None, vanished: bool = False
    ) -> list[Output]:
        response = await self._call("GET", f"/history/{prompt_id}")
        entry = response.json().get(prompt_id) if response.status_code == 200 else None
        if entry is None and vanished:
            raise PromptLost(f"{self.name}: prompt {prompt_id} left its queue without a history entry")
        if entry is None:
            raise BackendDown(f"{self.name}: lost prompt {prompt_id} (not in its history)")
        status = entry.get("status") or {}
        if final is None and not status.get("completed") and status.get("status_str") != "error":
            raise BackendDown(f"{self.name}: prompt {prompt_id} did not finish")
        outputs = []
        for node, item in output_files(entry.get("outputs", {})):
            params = {
                "filename": item["filename"],
                "subfolder": item.get("subfolder", ""),
                "type": item.get("type", "output"),
            }
            view = await self._call("GET", "/view", params=params)
            if view.status_code != 200:
                raise BackendDown(f"{self.name}: /view {item['filename']} answered {view.status_code}")
            name = Path(str(item["filename"])).name
            outputs.append(Output(node, name, view.content, content_type_of(name), item))
        await self._call("POST", "/history", json={"delete": [prompt_id]})
        if final is not None and final.get("type") == "execution_error":
            raise JobFailed(describe_execution_error(final.get("data", {})))
        if (final is not None and final.get("type") == "execution_interrupted") or (
            status.get("status_str") == "error"
        ):
            raise JobFailed(f"prompt {prompt_id} did not complete on {self.name}")
        return outputs

    def _local_input(self, name: Any) -> Path | None:
        """The file in this server's input folder that a LoadImage ``image`` value names, if any."""
        if not isinstance(name, str) or not name or "\\" in name or "\x00" in name or os.path.isabs(name):
            return None
        base = self.input_dir.resolve()
        path = (base / name).resolve()
        return path if path.is_relative_to(base) and path.is_file() else None

    async def _upload_inputs(self, graph: Mapping[str, Any]) -> dict[str, Any]:
        """Send the backend every LoadImage file the graph names that this server holds; returns
        the graph to send, naming each file as the backend stored it."""
        sent: dict[str, Any] = copy.deepcopy(dict(graph))
        for node in sent.values():
            if not isinstance(node, dict) or node.get("class_type") != "LoadImage":
                continue
            inputs = node.get("inputs")
            path = self._local_input(inputs.get("image")) if isinstance(inputs, dict) else None
            if path is None or not isinstance(inputs, dict):
                continue  # a file only the backend has (its own input folder)
            name = str(inputs["image"])
            subfolder, _, filename = name.rpartition("/")
            data = await asyncio.to_thread(path.read_bytes)
            files = {"image": (filename, data, content_type_of(filename))}
            form = {"overwrite": "true", "subfolder": subfolder}
            response = await self._call("POST", "/upload/image", files=files, data=form)
            if response.status_code != 200:
                raise JobFailed(f"{self.name} refused the upload of {name}: {response.text[:200]}")
            inputs["image"] = _stored_as(response, name)
        return sent

    async def _cancel(self, prompt_id: str) -> None:
        """Take the prompt out of the backend's queue, or interrupt it if it is the one running;
        its history entry is deleted once it has stopped (at once when it never ran)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._http.post("/queue", json={"delete": [prompt_id]})
                if prompt_id in await self._queued(running_only=True):
                    await self._http.post("/interrupt", json={"prompt_id": prompt_id})
                    self._in_background(self._forget_when_ended(prompt_id))
                else:
                    await self._http.post("/history", json={"delete": [prompt_id]})
        except (*_NETWORK_ERRORS, ValueError, TimeoutError) as exc:
            log.warning("%s: could not cancel %s: %s: %s", self.name, prompt_id, type(exc).__name__, exc)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` past the job that started it; ``close`` gives what is left a moment."""
        task = asyncio.get_running_loop().create_task(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _queued(self, running_only: bool = False) -> set[str]:
        """Prompt ids the backend runs (and, unless ``running_only``, has waiting)."""
        queue = (await self._http.get("/queue")).json()
        entries = queue.get("queue_running", []) + ([] if running_only else queue.get("queue_pending", []))
        return {str(entry[1]) for entry in entries if isinstance(entry, list) and len(entry) > 1}

    async def _forget_when_ended(self, prompt_id: str, poll_s: float = 0.25) -> None:
        """Delete an interrupted prompt's history once it left the queue (ComfyUI writes the entry
        as it takes the prompt out). A backend that stops answering has lost its history anyway."""
        failures = 0
        while failures < 3:
            try:
                if prompt_id not in await self._queued():
                    await self._http.post("/history", json={"delete": [prompt_id]})
                    return
                failures = 0
            except (*_NETWORK_ERRORS, ValueError) as exc:
                failures += 1
                log.debug("%s: waiting for %s to stop: %s", self.name, prompt_id, exc)
            await asyncio.sleep(poll_s)
        log.info("%s: gave up deleting the history of interrupted prompt %s", self.name, prompt_id)


def _stored_as(response: httpx.Response, sent: str) -> str:
    """``subfolder/name`` from ComfyUI's upload answer ``{"name", "subfolder", "type"}``."""
    try:
        body = response.json()
    except ValueError:
        return sent
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        return sent
    subfolder = str(body.get("subfolder") or "").strip("/")
    return f"{subfolder}/{name}" if subfolder else name
