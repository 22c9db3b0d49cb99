"""A backend reached over ComfyUI's HTTP and WebSocket API: a real ComfyUI server or another genserve.

It drives the API the way ComfyUI's own client scripts do: upload the input images the graph names,
open ``/ws?clientId=<job id>`` first (so no message is missed), ``POST /prompt``, follow the socket
to the prompt's final message, read ``/history/{id}``, fetch each file with ``/view``, and delete the
history entry (the original bridge never did, and its backends' histories grew without end).

Connection problems become ``BackendDown`` so the queue worker hands the job to another backend;
a socket that closes early is not trusted either way: the history says whether the prompt
finished. Cancelling removes the prompt from the backend's queue, or interrupts it only when it
is the one running there (``/interrupt`` without a prompt id would stop another client's job).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from genserve.workflows.bridge.backends import (
    Backend,
    BackendBusy,
    BackendDown,
    JobFailed,
    MessageSink,
    Output,
    content_type_of,
    describe_execution_error,
    output_files,
)
from genserve.workflows.bridge.progress import is_final, prompt_of

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
    ) -> None:
        super().__init__(name, max_inflight)
        self.url = url.rstrip("/")
        self.input_dir = input_dir
        self.timeout_s = timeout_s
        # A backend being cancelled is often one that stopped answering: give up on it quickly.
        self.cancel_timeout_s = cancel_timeout_s
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s)

    async def close(self) -> None:
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
        await self._upload_inputs(graph)
        prompt_id: str | None = None
        final: dict[str, Any] | None = None
        try:
            async with connect(
                _ws_url(self.url, job_id),
                max_size=None,
                open_timeout=self.timeout_s,
                close_timeout=self.cancel_timeout_s,
                proxy=None,
            ) as ws:
                response = await self._call("POST", "/prompt", json={"prompt": graph, "client_id": job_id})
                if response.status_code != 200:
                    raise JobFailed(f"{self.name} refused the workflow: {_refusal(response)}")
                prompt_id = str(response.json()["prompt_id"])
                async for raw in ws:
                    if isinstance(raw, bytes):  # preview images; the bridge sends percentages only
                        continue
                    message = json.loads(raw)
                    if prompt_of(message) != prompt_id:
                        continue
                    on_message(message)
                    if is_final(message):
                        final = message
                        break
        except asyncio.CancelledError:
            if prompt_id is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.shield(asyncio.wait_for(self._cancel(prompt_id), self.cancel_timeout_s))
            raise
        except _NETWORK_ERRORS as exc:
            if prompt_id is None:
                raise BackendDown(f"{self.name} ({self.url}): {type(exc).__name__}: {exc}") from None
            log.info("%s: socket lost during %s (%s); asking its history", self.name, prompt_id, exc)
        if prompt_id is None:
            raise BackendDown(f"{self.name}: the socket closed before the prompt was queued")
        return await self._collect(prompt_id, final)

    async def _collect(self, prompt_id: str, final: dict[str, Any] | None) -> list[Output]:
        response = await self._call("GET", f"/history/{prompt_id}")
        entry = response.json().get(prompt_id) if response.status_code == 200 else None
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

    async def _upload_inputs(self, graph: Mapping[str, Any]) -> None:
        """Send the backend every LoadImage file the graph names that this server holds."""
        for node in graph.values():
            if not isinstance(node, Mapping) or node.get("class_type") != "LoadImage":
                continue
            name = node.get("inputs", {}).get("image")
            if not isinstance(name, str) or "/" in name or "\\" in name:
                continue
            path = self.input_dir / name
            if not path.is_file():
                continue  # a file only the backend has (its own input folder)
            data = await asyncio.to_thread(path.read_bytes)
            files = {"image": (name, data, content_type_of(name))}
            response = await self._call("POST", "/upload/image", files=files, data={"overwrite": "true"})
            if response.status_code != 200:
                raise JobFailed(f"{self.name} refused the upload of {name}: {response.text[:200]}")

    async def _cancel(self, prompt_id: str) -> None:
        """Take the prompt out of the backend's queue, or interrupt it if it is the one running."""
        try:
            await self._http.post("/queue", json={"delete": [prompt_id]})
            queue = (await self._http.get("/queue")).json()
            running = [entry[1] for entry in queue.get("queue_running", []) if len(entry) > 1]
            if prompt_id in running:
                await self._http.post("/interrupt", json={"prompt_id": prompt_id})
            await self._http.post("/history", json={"delete": [prompt_id]})
        except (*_NETWORK_ERRORS, ValueError) as exc:
            log.info("%s: could not cancel %s: %s: %s", self.name, prompt_id, type(exc).__name__, exc)
