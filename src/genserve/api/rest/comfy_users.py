"""ComfyUI's per-user routes, as its frontend calls them: ``/users``, ``/settings`` and
``/userdata`` (saved workflows, templates, ``user.css``), stored per user by ``UserFiles``.

Who the user is: with API keys, the caller's key id, so a key never sees another key's settings
or files; without keys (an open, local server), ComfyUI's ``Comfy-User`` header, "default" when
absent. Answers use ComfyUI's shapes: JSON on success, a bare status with a plain-text reason on
refusal (400 bad path, 404 missing, 409 exists, 413 too large).

``/userdata/{file}`` takes one URL-encoded path (``workflows%2Fa.json``); the server decodes
``%2F`` before routing, so the file and a move's destination are read from the raw path.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.requests import HTTPConnection

from genserve.api.rest.auth import principal
from genserve.api.rest.dependencies import ComfyUi, ComfyUiDep
from genserve.errors import ErrorCode, GenserveError
from genserve.storage.userdata import check_user_id

router = APIRouter(tags=["comfyui"])

USER_HEADER = "comfy-user"
DEFAULT_USER = "default"
# Files the page asks for whether or not the user wrote them: missing, they read as empty.
DEFAULT_FILES = {"user.css": ("", "text/css"), "comfy.templates.json": ("[]", "application/json")}
# Settings a new user starts with: no first-run templates dialog (the demo models run none of them).
DEFAULT_SETTINGS = {"Comfy.TutorialCompleted": True}
T = TypeVar("T")


def comfy_user(conn: HTTPConnection) -> str:
    caller = principal(conn)
    if caller.key_id is not None:
        return check_user_id(caller.key_id, "API key id")
    return check_user_id(conn.headers.get(USER_HEADER) or DEFAULT_USER)


def _refusal(exc: GenserveError) -> Response:
    return PlainTextResponse(exc.message, status_code=exc.mapping.http_status)


async def _run(call: Callable[[], T]) -> T | Response:
    """The store's answer off the event loop, or ComfyUI's bare refusal."""
    try:
        return await asyncio.to_thread(call)
    except GenserveError as exc:
        return _refusal(exc)


def _flag(request: Request, name: str, default: str = "false") -> bool:
    return request.query_params.get(name, default).lower() == "true"


@router.get("/users")
async def get_users(conn: Request, ui: ComfyUiDep) -> Response:
    """Server storage, one user a browser: ComfyUI's single-user answer (its multi-user answer
    makes the frontend ask who is there, which the key or header already says)."""
    try:
        comfy_user(conn)
    except GenserveError as exc:
        return _refusal(exc)
    return JSONResponse({"storage": "server", "migrated": True})


@router.post("/users")
async def post_users(request: Request, ui: ComfyUiDep) -> Response:
    """A new user id for ``username`` (sent back as ``Comfy-User``); with API keys the users are
    the keys, so none is made here."""
    if principal(request).key_id is not None:
        return PlainTextResponse("with API keys each key is a user: add one with `genserve keys add`", 400)
    body = await _json(request)
    name = body.get("username") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        return JSONResponse({"error": "username not provided"}, status_code=400)
    plain = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in name.strip())[:40]
    user_id = f"{plain}_{uuid.uuid4().hex[:16]}"
    ui.users.home(user_id).mkdir(parents=True, exist_ok=True)
    return JSONResponse(user_id)


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _settings(ui: ComfyUi, request: Request) -> dict[str, Any]:
    return {**DEFAULT_SETTINGS, **ui.users.settings(comfy_user(request))}


@router.get("/settings")
async def get_settings(request: Request, ui: ComfyUiDep) -> Response:
    answer = await _run(lambda: _settings(ui, request))
    return answer if isinstance(answer, Response) else JSONResponse(answer)


@router.get("/settings/{setting_id}")
async def get_setting(setting_id: str, request: Request, ui: ComfyUiDep) -> Response:
    answer = await _run(lambda: _settings(ui, request))
    return answer if isinstance(answer, Response) else JSONResponse(answer.get(setting_id))


@router.post("/settings")
async def post_settings(request: Request, ui: ComfyUiDep) -> Response:
    values = await _json(request)
    if not isinstance(values, dict):
        return PlainTextResponse("the body must be a JSON object of settings", 400)

    def save() -> None:
        user = comfy_user(request)
        ui.users.save_settings(user, {**ui.users.settings(user), **values})

    answer = await _run(save)
    return answer if isinstance(answer, Response) else Response(status_code=200)


@router.post("/settings/{setting_id}")
async def post_setting(setting_id: str, request: Request, ui: ComfyUiDep) -> Response:
    try:
        value = json.loads(await request.body())
    except ValueError:
        return PlainTextResponse("the body must be a JSON value", 400)

    def save() -> None:
        user = comfy_user(request)
        ui.users.save_settings(user, {**ui.users.settings(user), setting_id: value})

    answer = await _run(save)
    return answer if isinstance(answer, Response) else Response(status_code=200)


@router.get("/global_subgraphs")
async def global_subgraphs() -> dict[str, Any]:
    return {}  # subgraph blueprints come from custom nodes; genserve has none


@router.get("/userdata")
async def list_userdata(request: Request, ui: ComfyUiDep, dir: str = "") -> Response:
    if not dir:
        return PlainTextResponse("Directory not provided", 400)
    recurse, full_info, split = (_flag(request, k) for k in ("recurse", "full_info", "split"))
    answer = await _run(
        lambda: ui.users.listing(comfy_user(request), dir, recurse=recurse, full_info=full_info, split=split)
    )
    return answer if isinstance(answer, Response) else JSONResponse(answer)


def _wire_paths(request: Request) -> list[str]:
    """The URL-encoded segments after ``/userdata/``, each decoded once (twice when the client
    encoded it twice, as ComfyUI allows)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    tail = path.split("/userdata/", 1)[1] if "/userdata/" in path else ""
    try:
        decoded = [unquote(part, errors="strict") for part in tail.split("/")]
        return [unquote(part, errors="strict") if "%" in part else part for part in decoded]
    except UnicodeDecodeError:
        raise GenserveError(ErrorCode.INVALID_INPUT, "file: not UTF-8 once decoded", field="file") from None


@router.get("/userdata/{file:path}")
async def get_userdata(request: Request, ui: ComfyUiDep) -> Response:
    try:
        name = "/".join(_wire_paths(request))
    except GenserveError as exc:
        return _refusal(exc)
    answer = await _run(lambda: ui.users.existing(comfy_user(request), name))
    if isinstance(answer, Response):
        if name in DEFAULT_FILES and answer.status_code == 404:
            content, media = DEFAULT_FILES[name]
            return Response(content, media_type=media)
        return answer
    return FileResponse(answer)


@router.post("/userdata/{file:path}")
async def post_userdata(request: Request, ui: ComfyUiDep) -> Response:
    """Saves the body as the file, or with ``/move/{dest}`` renames the file."""
    try:
        parts = _wire_paths(request)
    except GenserveError as exc:
        return _refusal(exc)
    overwrite = request.query_params.get("overwrite", "true") != "false"
    full_info = _flag(request, "full_info")
    if len(parts) == 3 and parts[1] == "move":
        source, dest = parts[0], parts[2]
        answer = await _run(lambda: ui.users.move(comfy_user(request), source, dest, overwrite=overwrite))
    else:
        data = await request.body()
        name = "/".join(parts)
        answer = await _run(lambda: ui.users.write(comfy_user(request), name, data, overwrite=overwrite))
    if isinstance(answer, Response):
        return answer
    user = comfy_user(request)
    info = await asyncio.to_thread(ui.users.info, user, answer)
    return JSONResponse(info if full_info else info["path"])


@router.delete("/userdata/{file:path}")
async def delete_userdata(request: Request, ui: ComfyUiDep) -> Response:
    try:
        name = "/".join(_wire_paths(request))
    except GenserveError as exc:
        return _refusal(exc)
    answer = await _run(lambda: ui.users.delete(comfy_user(request), name))
    return answer if isinstance(answer, Response) else Response(status_code=204)
