"""Undecodable request messages answer INVALID_ARGUMENT with a plain message, on every method.

grpc.aio decodes a request before the servicer (or its context) exists, so a message that is not
valid protobuf ends in UNKNOWN with protobuf's exception text in the details. The interceptor
moves decoding into the method: the handler receives raw bytes, decodes them with the method's
own deserializer, and a failure aborts through the one GenserveError mapping (INVALID_INPUT ->
INVALID_ARGUMENT, ``error-code`` in the trailing metadata). Streamed requests are decoded one by
one as the servicer reads them, so a bad message in the middle of an upload stops it the same way.
A servicer therefore reads a request stream through its iterator: ``context.read()`` would hand it
raw bytes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from genserve.errors import ErrorCode, GenserveError
from genserve.rpc.errors import abort

Decode = Callable[[bytes], Any]
Context = grpc.aio.ServicerContext


class DecodeRequestsInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every async handler so that its requests are decoded where a status can be set."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = str(handler_call_details.method).rpartition("/")[2] or "this method"
        return _wrapped(handler, handler.request_deserializer, method)


def _wrapped(handler: Any, decode: Decode, method: str) -> grpc.RpcMethodHandler:
    if handler.request_streaming:
        kind = "stream_stream" if handler.response_streaming else "stream_unary"
    else:
        kind = "unary_stream" if handler.response_streaming else "unary_unary"
    behaviour = getattr(handler, kind)
    if inspect.isasyncgenfunction(behaviour):
        new = _generator(behaviour, decode, method, streaming=handler.request_streaming)
    elif inspect.iscoroutinefunction(behaviour):
        new = _coroutine(behaviour, decode, method, streaming=handler.request_streaming)
    elif kind == "unary_unary":
        new = _in_thread(behaviour, decode, method)  # e.g. generated bases' UNIMPLEMENTED stubs
    else:
        return handler  # synchronous streaming handlers: none is served
    return handler._replace(request_deserializer=None, **{kind: new})  # type: ignore[no-any-return]


def _coroutine(behaviour: Any, decode: Decode, method: str, *, streaming: bool) -> Any:
    async def call(request: Any, context: Context) -> Any:
        decoded = (
            _stream(request, decode, method, context)
            if streaming
            else await _one(request, decode, method, context)
        )
        return await behaviour(decoded, context)

    return call


def _generator(behaviour: Any, decode: Decode, method: str, *, streaming: bool) -> Any:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        decoded = (
            _stream(request, decode, method, context)
            if streaming
            else await _one(request, decode, method, context)
        )
        async for response in behaviour(decoded, context):
            yield response

    return call


def _in_thread(behaviour: Any, decode: Decode, method: str) -> Any:
    """As grpc.aio runs a synchronous handler: on a worker thread, never on the loop."""

    async def call(request: bytes, context: Context) -> Any:
        decoded = await _one(request, decode, method, context)
        return await asyncio.get_running_loop().run_in_executor(None, behaviour, decoded, context)

    return call


async def _one(raw: bytes, decode: Decode, method: str, context: Context) -> Any:
    try:
        return decode(raw)
    except Exception:
        await abort(context, _undecodable(method))


async def _stream(
    raws: AsyncIterator[bytes], decode: Decode, method: str, context: Context
) -> AsyncIterator[Any]:
    async for raw in raws:
        yield await _one(raw, decode, method, context)


def _undecodable(method: str) -> GenserveError:
    return GenserveError(ErrorCode.INVALID_INPUT, f"{method}: the request message could not be decoded")
