"""The bridge's job routes: queue a workflow run, follow it, collect its outputs, cancel, free.

The door only translates; queueing, balancing and progress live in ``genserve.bridge``. ``/history``
hands out a client's finished outputs (multipart) and forgets them once the answer was written
to its end, so a client whose connection broke gets them again; with nothing to hand out it
answers one of the spec's two 204s. A full queue is 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from genserve.api.rest.auth import admin
from genserve.api.rest.bridge_wire import (
    CLIENT_ID,
    HistoryResponse,
    client_id_of,
    detail,
    no_content,
    refusal,
)
from genserve.api.rest.dependencies import BridgeDep, CatalogDep
from genserve.errors import ErrorCode, GenserveError

log = logging.getLogger("genserve.api.rest.bridge")

router = APIRouter(tags=["bridge"])


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise GenserveError(ErrorCode.INVALID_INPUT, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise GenserveError(ErrorCode.INVALID_INPUT, "the body must be a JSON object")
    return body


@router.post("/generate-based-workflow")
async def generate(request: Request, bridge: BridgeDep, catalog: CatalogDep) -> JSONResponse:
    try:
        client_id = client_id_of(request)
        body = await _json_object(request)
        alias = body.pop("workflow", None)
        if not isinstance(alias, str) or not alias:
            raise GenserveError(ErrorCode.INVALID_INPUT, "workflow is required (the alias to run)")
        graph = await asyncio.to_thread(catalog.build, alias, body)
        length = await asyncio.to_thread(bridge.submit, client_id, alias, graph)
    except GenserveError as exc:
        return refusal(exc)
    return JSONResponse({"detail": f"queued / {length}"})


@router.get("/history")
async def history(request: Request, bridge: BridgeDep) -> Response:
    try:
        client_id = client_id_of(request)
    except GenserveError as exc:
        return refusal(exc)
    for _ in range(3):  # a result another answer delivered meanwhile is read again without it
        results = await asyncio.to_thread(bridge.pending_results, client_id)
        if not results:
            break
        try:
            return HistoryResponse(results, lambda r=results: asyncio.to_thread(bridge.forget_delivered, r))
        except FileNotFoundError:
            continue
    if not await asyncio.to_thread(bridge.store.known_client, client_id):
        message = "The client ID has not been submitted to the server before. It is not recognized."
        return no_content(f"{message} / {client_id}")
    return no_content(f"No contents with that client id / {client_id}")


@router.get("/execution-info")
async def execution_info(request: Request, bridge: BridgeDep) -> JSONResponse:
    try:
        update = await asyncio.to_thread(bridge.execution_info, client_id_of(request))
    except GenserveError as exc:
        return refusal(exc)
    # The spec's table says "details" (as on the socket) and its examples say "detail": both.
    return JSONResponse({**update.message(), "detail": update.details})


@router.get("/generation-count")
async def generation_count(bridge: BridgeDep) -> JSONResponse:
    return JSONResponse(await asyncio.to_thread(bridge.store.generation_count))


@router.post("/free", dependencies=[Depends(admin)])
async def free(request: Request, bridge: BridgeDep) -> JSONResponse:
    client_id = request.query_params.get(CLIENT_ID, "").strip() or None
    try:
        freed = await bridge.free(client_id)
    except GenserveError as exc:
        return detail(exc.message)
    log.info("freed backends %s for %s", ", ".join(freed) or "none", client_id or "ALL")
    return JSONResponse({"detail": f"server memory free now / {client_id or 'ALL'}"})


@router.post("/interrupt")
async def interrupt(request: Request, bridge: BridgeDep) -> JSONResponse:
    try:
        client_id = client_id_of(request)
        if not await asyncio.to_thread(bridge.store.known_client, client_id):
            raise GenserveError(ErrorCode.INVALID_INPUT, f"unknown clientId {client_id!r}")
    except GenserveError as exc:
        return refusal(exc)
    bridge.cancel_client(client_id)
    return JSONResponse({"detail": f"interrupted that clientId will be ignored. / {client_id}"})
