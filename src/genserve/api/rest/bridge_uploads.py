"""The bridge's ``/upload``: a client's input files, stored where its jobs' LoadImage nodes find
them (``bridge-uploads/`` in the workflows input folder) and other clients do not."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from genserve.api.rest.bridge_wire import detail
from genserve.api.rest.dependencies import BridgeLimitsDep, rest_parts
from genserve.bridge.uploads import read_upload_parts, save_bridge_uploads
from genserve.errors import GenserveError

router = APIRouter(tags=["bridge"])


@router.post("/upload")
async def upload(request: Request, limits: BridgeLimitsDep) -> JSONResponse:
    max_file_bytes = limits.max_file_bytes
    try:
        parts = await read_upload_parts(request, max_file_bytes=max_file_bytes, max_files=limits.max_files)
        saved = await asyncio.to_thread(
            save_bridge_uploads,
            parts,
            limits.upload_dir,
            max_file_bytes=max_file_bytes,
            max_pixels=rest_parts(request).runtime.sandbox.max_image_pixels,
        )
    except GenserveError as exc:
        return detail(exc.message)
    return JSONResponse(saved)
