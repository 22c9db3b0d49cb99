"""One mapping of GenserveError onto a gRPC status, for every gRPC door: the status from errors.py's
table, the spec's error code in the trailing metadata ``error-code``, and the request id in
``x-request-id`` when there is one."""

from __future__ import annotations

from typing import NoReturn

import grpc

from genserve.errors import GenserveError

ERROR_CODE_KEY = "error-code"
REQUEST_ID_KEY = "x-request-id"


async def abort(
    context: grpc.aio.ServicerContext, err: GenserveError, request_id: str | None = None
) -> NoReturn:
    trailing = [(ERROR_CODE_KEY, err.code.value)]
    if request_id:
        trailing.append((REQUEST_ID_KEY, request_id))
    status = grpc.StatusCode[err.mapping.grpc_status]
    await context.abort(status, err.message, trailing_metadata=tuple(trailing))
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
