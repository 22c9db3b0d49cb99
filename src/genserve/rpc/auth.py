"""Credentials on gRPC: the same keys as REST, sent as ``authorization: Bearer <key>`` metadata.

An interceptor checks every call before its request is even decoded, so an unauthenticated
caller learns nothing of the methods but their names. Health checks stay open (orchestrators
probe without keys), and so does reflection, which shows the protos and nothing of the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from genserve.auth.guard import Guard, bearer
from genserve.auth.principal import Scope
from genserve.errors import GenserveError

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """``scopes`` names the methods (``/package.Service/Method``) that need more than ``infer``."""

    def __init__(self, guard: Guard, scopes: Mapping[str, Scope]) -> None:
        self.guard = guard
        self.scopes = dict(scopes)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES) or self.guard.open:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            principal = self.guard.principal(bearer(str(metadata.get("authorization", ""))))
            self.guard.require(principal, self.scopes.get(method, Scope.INFER), method)
        except GenserveError as exc:
            return _refusal(handler, exc)
        return handler


def _refusal(handler: grpc.RpcMethodHandler, exc: GenserveError) -> grpc.RpcMethodHandler:
    """A handler of the same shape that aborts with the refusal, the request left undecoded."""
    code = grpc.StatusCode[exc.mapping.grpc_status]

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, exc.message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, exc.message)
        yield  # pragma: no cover - a generator, so that streaming calls get a stream handler

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)
