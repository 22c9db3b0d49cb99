"""ComfyUI's ``/ws``: the prompt queue's status and progress messages for one client, as they happen.

The queue calls its listeners on its own thread; each socket gets them through an outbox on the
event loop. Nothing is expected from the client: reading only notices it leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect, WebSocketException
from starlette.status import WS_1008_POLICY_VIOLATION

from genserve.api.rest.auth import PrincipalDep
from genserve.api.rest.dependencies import PromptQueueDep
from genserve.errors import GenserveError

router = APIRouter(tags=["comfyui"])


@router.websocket("/ws")
async def ws(websocket: WebSocket, executor: PromptQueueDep, caller: PrincipalDep) -> None:
    client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def deliver(message: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(outbox.put_nowait, message)

    try:
        remove = executor.add_listener(client_id, deliver, caller)
    except GenserveError as exc:  # another key's client id: refused before the socket opens
        raise WebSocketException(WS_1008_POLICY_VIOLATION, exc.message) from None
    await websocket.accept()
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


async def _pump(websocket: WebSocket, outbox: asyncio.Queue[dict[str, Any]]) -> None:
    while True:
        await websocket.send_json(await outbox.get())
