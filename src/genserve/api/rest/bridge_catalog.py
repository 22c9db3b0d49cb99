"""The bridge's workflow catalog: which aliases a client may run (``/workflow-list``) and what
one takes (``/workflow-info?workflow=``)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from genserve.api.rest.bridge_wire import detail
from genserve.api.rest.dependencies import CatalogDep
from genserve.errors import GenserveError

router = APIRouter(tags=["bridge"])


@router.get("/workflow-list")
async def workflow_list(catalog: CatalogDep) -> JSONResponse:
    return JSONResponse(await asyncio.to_thread(catalog.aliases))


@router.get("/workflow-info")
async def workflow_info(request: Request, catalog: CatalogDep) -> JSONResponse:
    alias = request.query_params.get("workflow", "").strip()
    if not alias:
        return detail("workflow is required (query ?workflow=<alias>)")
    try:
        return JSONResponse(await asyncio.to_thread(catalog.info, alias))
    except GenserveError as exc:
        return detail(exc.message)
