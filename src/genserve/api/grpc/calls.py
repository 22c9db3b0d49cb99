"""How every unary RPC runs: request id, wire -> typed request, the engine, typed -> wire, and the
one mapping of GenserveError onto a gRPC status (from errors.py's table).

Messages map onto the services' pydantic models by field name (the protos name their fields as
the REST bodies do; a test checks both sides have the same fields), so no field is dropped on the
way in and a bad one is reported by the same validation as over REST.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel

from genserve.api.request_ids import checked_request_id
from genserve.engine.engine import Engine
from genserve.errors import ErrorCode, GenserveError
from genserve.rpc.errors import ERROR_CODE_KEY, REQUEST_ID_KEY, abort

log = logging.getLogger("genserve.grpc")

M = TypeVar("M", bound=Message)
# What REST answers too: an exception's own text may name server paths; the log has it.
INTERNAL_MESSAGE = "internal error; the server log has the details"


def message_to_dict(message: Message, model: type[BaseModel] | None = None) -> dict[str, Any]:
    """Fields the client set (proto3 defaults left out, so config defaults apply), by proto name.

    proto3 cannot tell an empty string or a zero from an unset field. Where ``model`` requires a
    field (``prompt``), there is no default to fall back on, so the wire's value is the client's
    value: an empty prompt arrives as ``""``, as it does over REST, not as a missing field.
    """
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    data.pop("request_id", None)
    if model is not None:
        for name, field in model.model_fields.items():
            descriptor = message.DESCRIPTOR.fields_by_name.get(name)
            wire_default = descriptor is not None and not descriptor.has_presence
            if field.is_required() and name not in data and wire_default:
                data[name] = getattr(message, name)
    return data


def model_to_message(model: BaseModel, cls: type[M]) -> M:
    """Responses hold scalars, repeated scalars and Structs, which the message constructor takes
    from plain values (four times quicker than ``json_format.ParseDict``)."""
    return cls(**model.model_dump(mode="json"))


def request_id_of(request: Message, context: grpc.aio.ServicerContext) -> str:
    in_body = getattr(request, "request_id", "")
    if in_body:
        return checked_request_id(in_body, "request_id")
    metadata = dict(context.invocation_metadata() or ())
    return checked_request_id(metadata.get(REQUEST_ID_KEY), REQUEST_ID_KEY)


async def guarded(
    context: grpc.aio.ServicerContext, request_id: str | None, work: Callable[[], Awaitable[M]]
) -> M:
    """Run ``work``; any failure answers with the table's status and the spec's error code."""
    try:
        return await work()
    except GenserveError as err:
        await abort(context, err, request_id)
    except grpc.aio.AbortError:
        raise
    except Exception:  # the last line of defence: a status, never a traceback or an exception's text
        log.exception("unexpected failure in an RPC (request_id=%s)", request_id)
        await abort(context, GenserveError(ErrorCode.INTERNAL, INTERNAL_MESSAGE), request_id)


def deadline(context: grpc.aio.ServicerContext, limit_s: float) -> float:
    """The client's deadline (time_remaining), capped by the server's own request timeout."""
    remaining = context.time_remaining()
    return limit_s if remaining is None else max(0.0, min(remaining, limit_s))


class ServiceCall:
    """Runs one pipeline service for a unary RPC."""

    def __init__(self, engine: Engine, request_timeout_s: float) -> None:
        self._engine = engine
        self._timeout = request_timeout_s

    async def __call__(
        self, service: str, request: Message, context: grpc.aio.ServicerContext, response_cls: type[M]
    ) -> M:
        request_id: str | None = None
        try:
            request_id = request_id_of(request, context)
        except GenserveError as err:
            await abort(context, err, None)

        async def work() -> M:
            body = message_to_dict(request, self._engine.service(service).request_model)
            limit = deadline(context, self._timeout)
            result = await self._engine.submit(service, body, request_id=request_id, timeout=limit)
            context.set_trailing_metadata(((REQUEST_ID_KEY, str(request_id)),))
            return model_to_message(result, response_cls)

        return await guarded(context, request_id, work)


__all__ = [
    "ERROR_CODE_KEY",
    "REQUEST_ID_KEY",
    "ErrorCode",
    "ServiceCall",
    "abort",
    "guarded",
    "message_to_dict",
    "model_to_message",
]
