"""ComfyUI's prompt queue routes: submit a prompt, read and trim the queue and the history, stop
the running prompt and free memory.

``router`` holds the routes only ComfyUI's API uses; ``shared_router`` those whose path the bridge
also uses at the root (GET ``/history``, ``/interrupt``, ``/free``), so the app can leave them out
there (see ``comfy``). Bodies are read leniently, as ComfyUI reads them: an empty or malformed body
is ``{}``.

The workflow bridge's prompts on this server's runner are not ComfyUI clients' to touch: the queue
leaves them out of every listing, clear, delete and interrupt made here (``PromptQueue``'s
``private`` prompts), and the bridge's own routes manage them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from genserve.api.rest.auth import PrincipalDep, admin
from genserve.api.rest.dependencies import PromptQueueDep
from genserve.auth.guard import Guard
from genserve.auth.principal import Scope
from genserve.errors import ErrorCode, GenserveError
from genserve.workflows.graph import GraphValidationError, node_errors
from genserve.workflows.nodes.base import NodeRegistry
from genserve.workflows.ui_format import UIWorkflowError, is_ui_workflow, registry_object_info, ui_to_api

router = APIRouter(tags=["comfyui"])
shared_router = APIRouter(tags=["comfyui"])


def _comfy_error(
    status: int, kind: str, message: str, errors: dict[str, Any] | None = None, details: str = ""
) -> JSONResponse:
    body = {
        "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
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


def _refused(exc: GraphValidationError) -> JSONResponse:
    """ComfyUI's answer to a prompt that fails validation: per-node errors when there are any."""
    errors = node_errors(exc.problems)
    if errors:
        return _comfy_error(
            400, "prompt_outputs_failed_validation", "Prompt outputs failed validation", errors
        )
    first = exc.problems[0]
    return _comfy_error(400, first.kind, first.message)


def _from_ui_format(
    prompt: dict[str, Any], extra: dict[str, Any], registry: NodeRegistry
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A UI-format workflow as its API prompt, kept itself as ``extra_pnginfo.workflow``, where
    ComfyUI's frontend puts it (SaveImage writes it into the PNG so the graph drags back in)."""
    if not is_ui_workflow(prompt):
        return prompt, extra
    converted = ui_to_api(prompt, registry_object_info(registry))
    pnginfo = extra.get("extra_pnginfo") if isinstance(extra.get("extra_pnginfo"), dict) else {}
    return converted, {**extra, "extra_pnginfo": {"workflow": prompt, **pnginfo}}


@router.post("/prompt")
async def post_prompt(request: Request, executor: PromptQueueDep, caller: PrincipalDep) -> JSONResponse:
    body = await _json(request)
    prompt = body.get("prompt")
    if prompt is None and is_ui_workflow(body):  # a saved UI workflow file posted as the body
        prompt = body
    if not isinstance(prompt, dict):
        return _comfy_error(400, "no_prompt", "No prompt provided")
    client_id = body.get("client_id")
    extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}

    def submit() -> tuple[str, int]:
        api_prompt, api_extra = _from_ui_format(prompt, extra, executor.runner.registry)
        return executor.submit(
            api_prompt, client_id if isinstance(client_id, str) else None, api_extra, owner=caller
        )

    try:
        prompt_id, number = await asyncio.to_thread(submit)
    except UIWorkflowError as exc:
        return _comfy_error(400, "invalid_prompt", exc.message, details=exc.reason)
    except GraphValidationError as exc:
        return _refused(exc)
    except GenserveError as exc:
        if exc.code is ErrorCode.RESOURCE_EXHAUSTED:
            return _comfy_error(503, "queue_unavailable", exc.message)
        status = exc.mapping.http_status
        return _comfy_error(status, exc.code.value.lower(), exc.message)
    return JSONResponse({"prompt_id": prompt_id, "number": number, "node_errors": {}})


@router.get("/queue")
async def get_queue(executor: PromptQueueDep, caller: PrincipalDep) -> dict[str, Any]:
    return executor.queue(viewer=caller)


@router.post("/queue")
async def post_queue(request: Request, executor: PromptQueueDep, caller: PrincipalDep) -> Response:
    """``clear`` empties the whole queue: admin only. ``delete`` removes the caller's own prompts."""
    body = await _json(request)
    if body.get("clear"):
        Guard.require(caller, Scope.ADMIN, "clearing the queue")
        executor.delete_queued(None, viewer=caller)
    if isinstance(body.get("delete"), list):
        executor.delete_queued([str(p) for p in body["delete"]], viewer=caller)
    return Response(status_code=200)


@shared_router.get("/history")
async def get_history(
    executor: PromptQueueDep, caller: PrincipalDep, max_items: int | None = None
) -> dict[str, Any]:
    return executor.history(max_items=max_items, viewer=caller)


@router.get("/history/{prompt_id}")
async def get_history_item(prompt_id: str, executor: PromptQueueDep, caller: PrincipalDep) -> dict[str, Any]:
    return executor.history(prompt_id, viewer=caller)


# The bridge answers GET /history at the root; this (delete) has no twin there, so it stays.
@router.post("/history")
async def post_history(request: Request, executor: PromptQueueDep, caller: PrincipalDep) -> Response:
    """Each caller clears and deletes its own entries (an admin: everyone's)."""
    body = await _json(request)
    if body.get("clear"):
        executor.delete_history(None, viewer=caller)
    if isinstance(body.get("delete"), list):
        executor.delete_history([str(p) for p in body["delete"]], viewer=caller)
    return Response(status_code=200)


@shared_router.post("/interrupt")
async def interrupt(request: Request, executor: PromptQueueDep, caller: PrincipalDep) -> Response:
    """Interrupts the running prompt only when it is the caller's (an admin's: any)."""
    body = await _json(request)
    prompt_id = body.get("prompt_id")
    executor.interrupt(prompt_id if isinstance(prompt_id, str) else None, viewer=caller)
    return Response(status_code=200)


@shared_router.post("/free", dependencies=[Depends(admin)])
async def free(request: Request, executor: PromptQueueDep) -> Response:
    body = await _json(request)
    await asyncio.to_thread(executor.free, bool(body.get("unload_models")), bool(body.get("free_memory")))
    return Response(status_code=200)
