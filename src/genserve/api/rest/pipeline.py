"""The pipeline endpoints: one POST route per service, each a thin call into the engine.

The body is validated by FastAPI against the service's own request model (so /openapi.json
shows it) and handed to ``Engine.submit`` unchanged. A client that disconnects cancels its work:
the route watches the connection while the engine runs and cancels the engine call when the
client goes, which sets the run's cancel flag (the service stops at its next step). The routes
are built from the built-in services' own models; the engine that runs them is the app's.
"""

# No `from __future__ import annotations`: FastAPI reads the body annotation, a per-service class,
# when each endpoint is defined (at import).

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from pydantic import BaseModel

from genserve.api.rest.dependencies import EngineDep, ServerSettingsDep
from genserve.api.rest.errors import ERROR_RESPONSES, request_id_of
from genserve.config import ServerSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.services.base import Service
from genserve.services.builtin import SERVICES
from genserve.services.pipeline import examples

TIMEOUT_HEADER = "x-request-timeout"

# (path, service name, summary)
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("/api/v1/latent/encode", "latent_encoder", "Latent encoder: image -> latent file"),
    ("/api/v1/text/encode", "text_encoder", "Text encoder: prompt + reference images -> encoding files"),
    ("/api/v1/sampling/sample", "sampling", "Sampling: encodings + latent -> sampled latent file"),
    ("/api/v1/decoding/decode", "decoding", "Decoding: latent file -> image file"),
    ("/api/v1/edit", "edit", "The one-piece edit pipeline: images + prompt -> image file"),
)


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; nobody is left to answer."""


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_while_connected(request: Request, work: Awaitable[BaseModel]) -> BaseModel:
    """Await ``work``, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client left (or this route was cancelled): stop the work
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, GenserveError):
                await task
            raise ClientDisconnected
    return task.result()


def request_timeout(request: Request, limits: ServerSettings) -> float:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return limits.request_timeout_s
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value <= limits.request_timeout_s):
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"X-Request-Timeout: must be seconds in (0, {limits.request_timeout_s:g}], got {raw!r}",
            field="X-Request-Timeout",
        )
    return value


def _endpoint(service: Service[Any, Any]) -> Callable[..., Any]:
    """One route per service, so each declares its own body model (FastAPI validates it and
    /openapi.json shows it with the spec's example)."""
    request_model = service.request_model
    shown = {
        "spec": {"summary": "The spec's example", "value": examples.REQUESTS.get(service.name, {})},
    }

    async def endpoint(
        request: Request,
        engine: EngineDep,
        limits: ServerSettingsDep,
        body: request_model = Body(openapi_examples=shown),  # type: ignore[valid-type]
    ) -> Response:
        timeout = request_timeout(request, limits)
        submitted = engine.submit(service, body, request_id=request_id_of(request), timeout=timeout)
        try:
            result = await run_while_connected(request, submitted)
        except ClientDisconnected:
            err = GenserveError(ErrorCode.CANCELLED, "the client disconnected; the work was cancelled")
            raise err from None
        return Response(result.model_dump_json(), media_type="application/json")

    return endpoint


def _add_route(path: str, name: str, summary: str) -> None:
    service = SERVICES[name]
    ok = {"model": service.response_model, "description": "Success"}
    spec_response = examples.RESPONSES.get(name)
    if spec_response is not None:
        ok["content"] = {"application/json": {"example": spec_response}}
    router.add_api_route(
        path,
        _endpoint(service),
        methods=["POST"],
        name=name,
        summary=summary,
        description=service.description
        + "\n\nModel names may be left out: the config's pipeline defaults apply. "
        "Send `X-Request-ID` to choose the request id and `X-Request-Timeout` (seconds) to "
        "ask for a shorter deadline than the server's.",
        response_model=service.response_model,
        responses={200: ok, **ERROR_RESPONSES},
    )


router = APIRouter(tags=["pipeline"])
for _path, _name, _summary in ROUTES:
    _add_route(_path, _name, _summary)
