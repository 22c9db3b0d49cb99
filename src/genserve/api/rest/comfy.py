"""ComfyUI's own server API on the REST door, so ComfyUI clients and the bridge can use genserve.

Routes, bodies and error shapes are ComfyUI's (``{"error": {...}, "node_errors": {...}}`` for a
refused prompt, bare status codes for /view), not genserve's spec error body: this is ComfyUI's
contract, and a client written against ComfyUI must not notice the difference. Work goes through
one PromptQueue (one prompt at a time); file routes are confined to the workflows input and
output folders. The bridge's uploads (``bridge-uploads/`` in the input folder) belong to its
clients: ``/upload/image`` never replaces a different file there, whatever ``overwrite`` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import mimetypes
import os
import re
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from genserve.errors import GenserveError
from genserve.storage.artifacts import write_bytes
from genserve.workflows.graph import GraphValidationError, node_errors
from genserve.workflows.nodes.builtin import PipelineResources
from genserve.workflows.nodes.image import BRIDGE_UPLOADS
from genserve.workflows.queue import PromptQueue

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ ()+-]")


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([str(path), str(root)]) == str(root)


def _comfy_error(status: int, kind: str, message: str, errors: dict[str, Any] | None = None) -> JSONResponse:
    body = {
        "error": {"type": kind, "message": message, "details": "", "extra_info": {}},
        "node_errors": errors or {},
    }
    return JSONResponse(body, status_code=status)


async def _json(request: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty or malformed body reads as {} (ComfyUI is as lenient)."""
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _folder(base: Path, subfolder: str) -> Path | None:
    """``base/subfolder`` when it stays inside ``base`` (no ``..``, no absolute paths), else None."""
    if subfolder and (os.path.isabs(subfolder) or "\x00" in subfolder):
        return None
    path = (base / subfolder).resolve()
    return path if _inside(path, base.resolve()) else None


def safe_upload_name(raw: str) -> str | None:
    """The last path component, with anything but plain characters replaced: ``../x.png`` -> ``x.png``."""
    name = _SAFE_NAME.sub("_", raw.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return None if name in {"", ".", ".."} or name.startswith(".") else name


async def _form_fields(request: Request, max_part_size: int) -> dict[str, tuple[str | None, bytes]]:
    """Form fields by name -> (file name or None, content); a repeated name keeps its last part.

    Raises MultiPartException or Starlette's HTTPException (its wrapper inside an app) for a body
    that is not valid multipart.
    """
    fields: dict[str, tuple[str | None, bytes]] = {}
    async with request.form(max_part_size=max_part_size) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                fields[name] = (value.filename, await value.read())
            else:
                fields[name] = (None, value.encode())
    return fields


# ComfyUI routes whose path the bridge's spec also uses (with another protocol).
SHARED_PATHS = frozenset({"/ws", "/history", "/free", "/interrupt"})


def comfy_router(
    executor: PromptQueue, max_upload_bytes: int, *, skip: frozenset[str] = frozenset()
) -> APIRouter:
    """ComfyUI's routes; ``skip`` leaves out paths another router serves (the bridge's, at the root)."""
    router = APIRouter(tags=["comfyui"])
    resources: PipelineResources = executor.resources
    folders = {
        "input": resources.input_dir,
        "output": resources.output_dir or resources.sandbox.default_output_dir,
    }

    @router.post("/prompt")
    async def post_prompt(request: Request) -> JSONResponse:
        body = await _json(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, dict):
            return _comfy_error(400, "no_prompt", "No prompt provided")
        client_id = body.get("client_id")
        extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
        try:
            prompt_id, number = await asyncio.to_thread(
                executor.submit, prompt, client_id if isinstance(client_id, str) else None, extra
            )
        except GraphValidationError as exc:
            errors = node_errors(exc.problems)
            if errors:
                return _comfy_error(
                    400, "prompt_outputs_failed_validation", "Prompt outputs failed validation", errors
                )
            first = exc.problems[0]
            return _comfy_error(400, first.kind, first.message)
        except GenserveError as exc:
            return _comfy_error(503, "queue_unavailable", exc.message)
        return JSONResponse({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    @router.get("/queue")
    async def get_queue() -> dict[str, Any]:
        return executor.queue()

    @router.post("/queue")
    async def post_queue(request: Request) -> Response:
        body = await _json(request)
        if body.get("clear"):
            executor.delete_queued(None)
        if isinstance(body.get("delete"), list):
            executor.delete_queued([str(p) for p in body["delete"]])
        return Response(status_code=200)

    @router.get("/history")
    async def get_history(max_items: int | None = None) -> dict[str, Any]:
        return executor.history(max_items=max_items)

    @router.get("/history/{prompt_id}")
    async def get_history_item(prompt_id: str) -> dict[str, Any]:
        return executor.history(prompt_id)

    @router.post("/history")
    async def post_history(request: Request) -> Response:
        body = await _json(request)
        if body.get("clear"):
            executor.delete_history(None)
        if isinstance(body.get("delete"), list):
            executor.delete_history([str(p) for p in body["delete"]])
        return Response(status_code=200)

    @router.get("/view")
    async def view(filename: str = "", type: str = "output", subfolder: str = "") -> Response:
        base = folders.get(type)
        name = filename.replace("\\", "/")
        if base is None or not name or "/" in name or name in {".", ".."} or "\x00" in name:
            return Response(status_code=400)
        folder = _folder(base, subfolder)
        path = (folder / name).resolve() if folder is not None else None
        if path is None or not _inside(path, base.resolve()):
            return Response(status_code=403)
        if not path.is_file():
            return Response(status_code=404)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(
            path, media_type=media, headers={"Content-Disposition": f'filename="{path.name}"'}
        )

    @router.post("/upload/image")
    async def upload_image(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return Response("expected multipart/form-data", status_code=400)
        body = await request.body()
        if len(body) > max_upload_bytes:
            return Response(f"upload larger than {max_upload_bytes} bytes", status_code=413)
        try:  # the form parser reads the body cached above, not the stream again
            fields = await _form_fields(request, max_upload_bytes)
        except (MultiPartException, HTTPException) as exc:
            detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
            return Response(f"cannot read the multipart body: {detail}", status_code=400)
        if "image" not in fields or fields["image"][0] is None:
            return Response("no image part", status_code=400)
        raw_name, data = fields["image"]
        name = safe_upload_name(raw_name or "")
        if name is None:
            return Response("invalid file name", status_code=400)
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return Response("the file is not an image", status_code=400)
        kind = fields.get("type", (None, b"input"))[1].decode(errors="replace") or "input"
        if kind != "input":  # uploads land in the input folder only; outputs are the runner's
            return Response("type must be input", status_code=400)
        subfolder = fields.get("subfolder", (None, b""))[1].decode(errors="replace").strip().strip("/")
        folder = _folder(folders["input"], subfolder)
        if folder is None:
            return Response("invalid subfolder", status_code=400)
        overwrite = fields.get("overwrite", (None, b""))[1].decode(errors="replace").lower() in {"true", "1"}
        protected = _inside(folder, (folders["input"] / BRIDGE_UPLOADS).resolve())
        stored = await asyncio.to_thread(_store, folder, name, data, overwrite, protected)
        return JSONResponse({"name": stored, "subfolder": subfolder, "type": "input"})

    @router.post("/interrupt")
    async def interrupt(request: Request) -> Response:
        body = await _json(request)
        prompt_id = body.get("prompt_id")
        executor.interrupt(prompt_id if isinstance(prompt_id, str) else None)
        return Response(status_code=200)

    @router.post("/free")
    async def free(request: Request) -> Response:
        body = await _json(request)
        await asyncio.to_thread(executor.free, bool(body.get("unload_models")), bool(body.get("free_memory")))
        return Response(status_code=200)

    @router.get("/object_info")
    async def object_info() -> dict[str, Any]:
        return executor.runner.registry.object_info()

    @router.get("/object_info/{node_class}")
    async def object_info_one(node_class: str) -> dict[str, Any]:
        if node_class not in executor.runner.registry:
            return {}
        return executor.runner.registry.object_info(node_class)

    @router.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def deliver(message: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(outbox.put_nowait, message)

        remove = executor.add_listener(client_id, deliver)
        try:
            first = executor.status_message()
            first["data"]["sid"] = client_id
            await websocket.send_json(first)
            sender = asyncio.create_task(_pump(websocket, outbox))
            try:
                while True:  # nothing is expected from the client; this notices it leave
                    await websocket.receive_text()
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            remove()

    if skip:  # the bridge answers GET /history; ComfyUI's POST /history (delete) has no twin
        router.routes[:] = [route for route in router.routes if not _shadowed(route, skip)]
    return router


def _shadowed(route: Any, skip: frozenset[str]) -> bool:
    path = getattr(route, "path", None)
    if path not in skip:
        return False
    methods = getattr(route, "methods", None)
    return path != "/history" or methods is None or "GET" in methods


async def _pump(websocket: WebSocket, outbox: asyncio.Queue[dict[str, Any]]) -> None:
    while True:
        await websocket.send_json(await outbox.get())


def _store(folder: Path, name: str, data: bytes, overwrite: bool, protected: bool = False) -> str:
    """Write the upload; without ``overwrite`` an existing name becomes ``stem (1).ext`` (ComfyUI).

    In a ``protected`` folder (the bridge's uploads) ``overwrite`` only accepts the same bytes again
    (a bridge re-sending a job's input to this backend); different bytes get a fresh name, as
    without ``overwrite``, so no client can replace a file another client's job reads.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if protected and overwrite and path.exists():
        with contextlib.suppress(OSError):
            if path.is_file() and path.read_bytes() == data:
                return path.name
        overwrite = False
    if not overwrite:
        stem, suffix = os.path.splitext(name)
        counter = 1
        while path.exists():
            path = folder / f"{stem} ({counter}){suffix}"
            counter += 1
    write_bytes(path, data, durable=True)
    return path.name
