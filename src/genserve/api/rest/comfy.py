"""ComfyUI's own server API on the REST door, so ComfyUI clients and the bridge can use genserve.

Routes, bodies and error shapes are ComfyUI's (``{"error": {...}, "node_errors": {...}}`` for a
refused prompt, bare status codes for /view), not genserve's spec error body: this is ComfyUI's
contract, and a client written against ComfyUI must not notice the difference. Work goes through
one PromptQueue (one prompt at a time); file routes are confined to the workflows input and
output folders.

The routes live by idea in ``comfy_queue`` (prompts, queue, history, interrupt, free),
``comfy_files`` (view, uploads), ``comfy_nodes`` (object_info), ``comfy_system`` (server facts),
``comfy_models`` (model folders) and ``comfy_ws`` (the socket); here
they are gathered into the two routers the app mounts. The API is served whole under ``/comfy``
and again at the root, where, when the bridge is served too, the bridge's spec owns the paths
both use (``/ws``, GET ``/history``, ``/free``, ``/interrupt``, with another protocol): those are
``shared_router``'s, every other route is ``router``'s.
"""

from __future__ import annotations

from fastapi import APIRouter

from genserve.api.rest import comfy_files, comfy_models, comfy_nodes, comfy_queue, comfy_system, comfy_ws

router = APIRouter()
router.include_router(comfy_queue.router)
router.include_router(comfy_files.router)
router.include_router(comfy_nodes.router)
router.include_router(comfy_system.router)
router.include_router(comfy_models.router)

shared_router = APIRouter()
shared_router.include_router(comfy_queue.shared_router)
shared_router.include_router(comfy_ws.router)
