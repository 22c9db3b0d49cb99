"""The bridge's ``/ws?clientId=``: one client's job updates as the spec's ``{"status", "details"}``.

The socket says ``listening`` when nothing happened for a while and closes after a job's final
word once the client has no job left. A client that goes away mid-job cancels its own jobs (and
only its); a server that is stopping closes with 1012 and keeps the jobs queued for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from genserve.api.rest.bridge_wire import client_id_of, refusal
from genserve.api.rest.dependencies import BridgeDep, BridgeLimitsDep
from genserve.bridge.dispatcher import SERVER_CLOSING, SHUTTING_DOWN, Bridge
from genserve.bridge.sessions import CONNECTED, LISTENING
from genserve.errors import GenserveError

router = APIRouter(tags=["bridge"])

_SERVICE_RESTART = 1012


@router.websocket("/ws")
async def ws(websocket: WebSocket, bridge: BridgeDep, limits: BridgeLimitsDep) -> None:
    try:
        client_id = client_id_of(websocket)
    except GenserveError as exc:
        await websocket.send_denial_response(refusal(exc))
        return
    await websocket.accept()
    closed_by_server = restarting = False
    with bridge.sessions.subscribe(client_id) as updates:
        reader = asyncio.create_task(_until_disconnect(websocket))
        try:
            await websocket.send_json(CONNECTED.message())
            closed_by_server = await _follow(
                websocket, bridge, client_id, updates, reader, limits.listening_interval_s
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
    await _after_close(bridge, client_id, closed_by_server or restarting)


async def _after_close(bridge: Bridge, client_id: str, jobs_stay: bool) -> None:
    """Once unsubscribed: another socket of this client (a reconnect) may still follow its job, so
    only the last one to close speaks for the client. ``jobs_stay``: the server closed the socket
    or is restarting, so the client's jobs are not cancelled."""
    if bridge.sessions.subscribed(client_id):
        return
    active = await asyncio.to_thread(bridge.active_jobs, client_id)
    if not active:
        bridge.sessions.forget(client_id)
    elif not jobs_stay and not bridge.sessions.subscribed(client_id):
        # The client went away mid-job: its own jobs (and only its) are cancelled.
        bridge.cancel_client(client_id)


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
