"""The workflow bridge's endpoints on the REST door, over one ``Bridge`` and its catalog.

The spec is the contract: query keys (``clientId``, ``workflow``), bodies, ``{"detail": ...}`` with
400 for every error, the WebSocket's ``{"status", "details"}`` messages, a multipart ``/history``
that forgets what it hands out, and its two 204 answers. The door only translates; queueing,
balancing and progress live in ``genserve.bridge``.

The routes live by idea in ``bridge_catalog`` (workflow-list, workflow-info), ``bridge_uploads``
(upload), ``bridge_jobs`` (generate, history, execution-info, generation-count, free, interrupt)
and ``bridge_ws`` (the socket), with the spec's answer shapes in ``bridge_wire``; here they are
gathered into the one router the app mounts at the root.
"""

from __future__ import annotations

from fastapi import APIRouter

from genserve.api.rest import bridge_catalog, bridge_jobs, bridge_uploads, bridge_ws

router = APIRouter()
router.include_router(bridge_catalog.router)
router.include_router(bridge_uploads.router)
router.include_router(bridge_jobs.router)
router.include_router(bridge_ws.router)
