"""Credentials on the REST and WebSocket routes: one app-wide dependency names the caller, and
routes that change the server ask for the admin scope.

Health probes stay open (orchestrators probe without keys), as do the OpenAPI pages, which show
the API's shape and nothing of the server's state. Browsers cannot set headers on a WebSocket, so
a WebSocket may send its key as ``?token=``; HTTP routes take only the header, which keeps keys
out of access logs and proxies' URLs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.exceptions import WebSocketException
from starlette.requests import HTTPConnection
from starlette.status import WS_1008_POLICY_VIOLATION

from genserve.api.rest.dependencies import rest_parts
from genserve.auth.guard import Guard, bearer
from genserve.auth.principal import ANONYMOUS, Principal, Scope
from genserve.errors import GenserveError

OPEN_PATHS = frozenset({"/health/live", "/health/ready"})


async def authenticate(conn: HTTPConnection) -> None:
    """Every route's first dependency: refuses a missing or bad key (401; a WebSocket is closed
    with 1008 before it opens) and records the caller for the route."""
    if conn.url.path in OPEN_PATHS:
        return
    websocket = conn.scope["type"] == "websocket"
    token = bearer(conn.headers.get("authorization"))
    if token is None and websocket:
        token = conn.query_params.get("token")
    try:
        conn.state.principal = rest_parts(conn).guard.principal(token)
    except GenserveError as exc:
        if websocket:
            raise WebSocketException(WS_1008_POLICY_VIOLATION, exc.message) from None
        raise


def principal(conn: HTTPConnection) -> Principal:
    return getattr(conn.state, "principal", ANONYMOUS)


def admin(conn: HTTPConnection) -> Principal:
    """For routes that change the server for everyone: models, memory, queues."""
    caller = principal(conn)
    try:
        Guard.require(caller, Scope.ADMIN, f"{conn.scope.get('method', 'WEBSOCKET')} {conn.url.path}")
    except GenserveError as exc:
        if conn.scope["type"] == "websocket":
            raise WebSocketException(WS_1008_POLICY_VIOLATION, exc.message) from None
        raise
    return caller


PrincipalDep = Annotated[Principal, Depends(principal)]
AdminDep = Annotated[Principal, Depends(admin)]
