"""The workflow bridge's endpoints (spec 003) on the REST door, over one ``Bridge`` and its catalog.

The spec is the contract: query keys (``clientId``, ``workflow``), bodies, ``{"detail": ...}`` with
400 for every error, the WebSocket's ``{"status", "details"}`` messages, a multipart ``/history``
that forgets what it hands out, and its two 204 answers. The door only translates; queueing,
balancing and progress live in ``workflows.bridge``. Query parameters are read by hand rather than
declared, so a missing ``clientId`` is the spec's 400 ``{"detail"}``, not FastAPI's 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from genserve.bridge.aliases import WorkflowCatalog
from genserve.bridge.dispatcher import SERVER_CLOSING, SHUTTING_DOWN, Bridge
from genserve.bridge.sessions import CONNECTED, LISTENING
from genserve.bridge.uploads import read_upload_parts, save_bridge_uploads
from genserve.errors import ErrorCode, GenserveError
from genserve.storage.jobs import Result

log = logging.getLogger("genserve.api.rest.bridge")

CLIENT_ID = "clientId"
_SERVICE_RESTART = 1012
# Printable ASCII but "%": what an X-Detail header carries as is; anything else is percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _detail(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def header_text(message: str) -> str:
    """``message`` as a header value: UTF-8 percent-encoded outside printable ASCII (and ``%``
    itself), so a clientId such as ``한글`` or one holding CR/LF can neither break the response
    (latin-1 only, no line breaks) nor forge a header; ASCII text stays as readable as it was."""
    return quote(message, safe=_HEADER_SAFE)


def _no_content(message: str) -> Response:
    """The spec's 204 answers. HTTP forbids a body on 204 (uvicorn refuses to send one, and clients
    would not read it), so the spec's ``{"detail": ...}`` text travels in the ``X-Detail`` header,
    percent-encoded where it must be (``urllib.parse.unquote`` gives the text back)."""
    return Response(status_code=204, headers={"X-Detail": header_text(message)})


def _client_id(request: Request | WebSocket) -> str:
    value = request.query_params.get(CLIENT_ID, "").strip()
    if not value:
        raise GenserveError(ErrorCode.INVALID_INPUT, "clientId is required (query ?clientId=...)")
    if len(value) > 200:
        raise GenserveError(ErrorCode.INVALID_INPUT, "clientId is longer than 200 characters")
    return value


def _multipart(results: list[tuple[Result, bytes]]) -> Response:
    """One form-data part per output, named by its result name, with its file name and type."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for result, data in results:
        name = result.name.replace('"', "_")
        filename = str(result.metadata.get("filename", result.name)).replace('"', "_")
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {result.content_type}\r\n\r\n"
        )
        chunks += [head.encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(chunks), media_type=f"multipart/form-data; boundary={boundary}")


def bridge_router(
    bridge: Bridge,
    catalog: WorkflowCatalog,
    *,
    upload_dir: Path,
    max_file_bytes: int,
    max_files: int,
    listening_interval_s: float,
) -> APIRouter:
    """The spec's routes. ``upload_dir`` is the workflows input folder: ``/upload`` stores into its
    ``bridge-uploads/`` subfolder, where LoadImage finds the files and other clients do not."""
    router = APIRouter(tags=["bridge"])

    @router.get("/workflow-list")
    async def workflow_list() -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(catalog.aliases))

    @router.get("/workflow-info")
    async def workflow_info(request: Request) -> JSONResponse:
        alias = request.query_params.get("workflow", "").strip()
        if not alias:
            return _detail("workflow is required (query ?workflow=<alias>)")
        try:
            return JSONResponse(await asyncio.to_thread(catalog.info, alias))
        except GenserveError as exc:
            return _detail(exc.message)

    @router.post("/upload")
    async def upload(request: Request) -> JSONResponse:
        try:
            parts = await read_upload_parts(request, max_file_bytes=max_file_bytes, max_files=max_files)
            saved = await asyncio.to_thread(
                save_bridge_uploads, parts, upload_dir, max_file_bytes=max_file_bytes
            )
        except GenserveError as exc:
            return _detail(exc.message)
        return JSONResponse(saved)

    @router.post("/generate-based-workflow")
    async def generate(request: Request) -> JSONResponse:
        try:
            client_id = _client_id(request)
            try:
                body = await request.json()
            except ValueError:
                raise GenserveError(ErrorCode.INVALID_INPUT, "the body must be a JSON object") from None
            if not isinstance(body, dict):
                raise GenserveError(ErrorCode.INVALID_INPUT, "the body must be a JSON object")
            alias = body.pop("workflow", None)
            if not isinstance(alias, str) or not alias:
                raise GenserveError(ErrorCode.INVALID_INPUT, "workflow is required (the alias to run)")
            graph = await asyncio.to_thread(catalog.build, alias, body)
            length = await asyncio.to_thread(bridge.submit, client_id, alias, graph)
        except GenserveError as exc:
            return _detail(exc.message)
        return JSONResponse({"detail": f"queued / {length}"})

    @router.get("/history")
    async def history(request: Request) -> Response:
        try:
            client_id = _client_id(request)
        except GenserveError as exc:
            return _detail(exc.message)
        taken = await asyncio.to_thread(bridge.take_history, client_id)
        if taken:
            return _multipart(taken)
        if not await asyncio.to_thread(bridge.store.known_client, client_id):
            message = "The client ID has not been submitted to the server before. It is not recognized."
            return _no_content(f"{message} / {client_id}")
        return _no_content(f"No contents with that client id / {client_id}")

    @router.get("/execution-info")
    async def execution_info(request: Request) -> JSONResponse:
        try:
            update = await asyncio.to_thread(bridge.execution_info, _client_id(request))
        except GenserveError as exc:
            return _detail(exc.message)
        # The spec's table says "details" (as on the socket) and its examples say "detail": both.
        return JSONResponse({**update.message(), "detail": update.details})

    @router.get("/generation-count")
    async def generation_count() -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(bridge.store.generation_count))

    @router.post("/free")
    async def free(request: Request) -> JSONResponse:
        client_id = request.query_params.get(CLIENT_ID, "").strip() or None
        try:
            freed = await bridge.free(client_id)
        except GenserveError as exc:
            return _detail(exc.message)
        log.info("freed backends %s for %s", ", ".join(freed) or "none", client_id or "ALL")
        return JSONResponse({"detail": f"server memory free now / {client_id or 'ALL'}"})

    @router.post("/interrupt")
    async def interrupt(request: Request) -> JSONResponse:
        try:
            client_id = _client_id(request)
            if not await asyncio.to_thread(bridge.store.known_client, client_id):
                raise GenserveError(ErrorCode.INVALID_INPUT, f"unknown clientId {client_id!r}")
        except GenserveError as exc:
            return _detail(exc.message)
        bridge.cancel_client(client_id)
        return JSONResponse({"detail": f"interrupted that clientId will be ignored. / {client_id}"})

    @router.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        try:
            client_id = _client_id(websocket)
        except GenserveError as exc:
            await websocket.send_denial_response(_detail(exc.message))
            return
        await websocket.accept()
        closed_by_server = restarting = False
        with bridge.sessions.subscribe(client_id) as updates:
            reader = asyncio.create_task(_until_disconnect(websocket))
            try:
                await websocket.send_json(CONNECTED.message())
                closed_by_server = await _follow(
                    websocket, bridge, client_id, updates, reader, listening_interval_s
                )
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
            finally:
                if not reader.done():
                    reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
                # 1012: the server itself is restarting; its jobs stay queued for the next start.
                restarting = bridge.stopping or _close_code(reader) == _SERVICE_RESTART
        # Unsubscribed now. Another socket of this client (a reconnect) may still follow its job:
        # only the last one to close speaks for the client.
        if bridge.sessions.subscribed(client_id):
            return
        active = await asyncio.to_thread(bridge.active_jobs, client_id)
        if not active:
            bridge.sessions.forget(client_id)
        elif not closed_by_server and not restarting and not bridge.sessions.subscribed(client_id):
            # The client went away mid-job: its own jobs (and only its) are cancelled.
            bridge.cancel_client(client_id)

    return router


def _close_code(reader: asyncio.Task[int]) -> int | None:
    """The code the client's socket closed with, if the reader saw it close."""
    if not reader.done() or reader.cancelled() or reader.exception() is not None:
        return None
    return reader.result()


async def _until_disconnect(websocket: WebSocket) -> int:
    """Nothing is expected from the client; reading notices it leave. Returns the close code."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return int(message.get("code") or 1005)


async def _follow(
    websocket: WebSocket,
    bridge: Bridge,
    client_id: str,
    updates: asyncio.Queue[Any],
    reader: asyncio.Task[int],
    interval_s: float,
) -> bool:
    """Forward updates, say ``listening`` when quiet, close after a job's final word (True then)."""
    while not reader.done():
        getter = asyncio.create_task(updates.get())
        done, _ = await asyncio.wait(
            {getter, reader}, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED
        )
        if getter not in done:
            getter.cancel()
            if reader.done():
                return False
            await websocket.send_json(LISTENING.message())
            continue
        update = getter.result()
        await websocket.send_json(update.message())
        if update is SHUTTING_DOWN or update is SERVER_CLOSING:
            await websocket.close(code=_SERVICE_RESTART)  # the jobs stay queued for the next start
            return True
        if update.final and not await asyncio.to_thread(bridge.active_jobs, client_id):
            await websocket.close()
            return True
    return False
