"""The OpenAI-compatible door: /v1/models, /v1/chat/completions and /v1/completions over text_generation.

Any OpenAI client (the ``openai`` package, curl, LangChain ...) pointed at ``<server>/v1`` gets
the LLMs in ``models/llm/``. The routes read the JSON themselves instead of through FastAPI's
validation, because OpenAI clients expect OpenAI's error shape (``openai_wire``), not genserve's.
Streams are server-sent events relayed from ``Engine.stream``; the first item is awaited before
the stream opens, so an unknown model or a full queue still answers with a real status code. A
client that goes away cancels its generation at the next token.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from genserve.api.rest.dependencies import EngineDep, ModelManagerDep, ServerSettingsDep
from genserve.api.rest.errors import request_id_of
from genserve.api.rest.openai_wire import (
    OpenAIError,
    chat_completion,
    chat_fields,
    completion_fields,
    stream_chunk,
    text_completion,
    usage,
)
from genserve.api.rest.pipeline import ClientDisconnected, request_timeout, run_while_connected
from genserve.config import ServerSettings
from genserve.engine.engine import Engine
from genserve.errors import ErrorCode, GenserveError
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind
from genserve.services.base import parse_request
from genserve.services.text.generation import TextGenerationChunk, TextGenerationResponse

SERVICE = "text_generation"
FieldMapper = Callable[[Mapping[str, Any]], tuple[dict[str, Any], dict[str, str]]]


class _Body(BaseModel):
    """Shown in /openapi.json only; the route maps the raw JSON itself (see the module docstring)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(examples=["tiny-chat"])
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int | None = None


class ChatCompletionBody(_Body):
    messages: list[dict[str, Any]] = Field(examples=[[{"role": "user", "content": "Hello!"}]])


class CompletionBody(_Body):
    prompt: str = Field(examples=["Once upon a time"])


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _error(err: OpenAIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def _until_disconnect(request: Request, cancel: threading.Event) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


@dataclass(frozen=True)
class _Answer:
    """One request's answer in the making: what the response and its stream chunks are named."""

    chat: bool
    request_id: str
    answer_id: str
    timeout: float


async def _answer(request: Request, engine: Engine, limits: ServerSettings, *, chat: bool) -> Response:
    mapper: FieldMapper = chat_fields if chat else completion_fields
    names: dict[str, str] = {}
    try:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise OpenAIError(400, "the request body is not valid JSON", None, "invalid_json") from None
        fields, names = mapper(body)
        parsed = parse_request(engine.service(SERVICE), fields)
        timeout = request_timeout(request, limits)
        rid = request_id_of(request) or str(uuid.uuid4())
        answer = _Answer(chat, rid, f"{'chatcmpl' if chat else 'cmpl'}-{rid}", timeout)
        if body.get("stream") is True:
            options = body.get("stream_options")
            with_usage = isinstance(options, Mapping) and options.get("include_usage") is True
            return await _stream(request, engine, parsed, answer, with_usage)
        work = engine.submit(SERVICE, parsed, request_id=rid, timeout=timeout)
        result = await run_while_connected(request, work)
    except OpenAIError as err:
        return _error(err)
    except GenserveError as err:
        return _error(OpenAIError.from_genserve(err, names))
    except ClientDisconnected:
        err = GenserveError(ErrorCode.CANCELLED, "the client disconnected; the work was cancelled")
        return _error(OpenAIError.from_genserve(err))
    assert isinstance(result, TextGenerationResponse)
    return JSONResponse(
        chat_completion(answer.answer_id, result) if chat else text_completion(answer.answer_id, result)
    )


async def _stream(
    request: Request, engine: Engine, parsed: BaseModel, answer: _Answer, with_usage: bool
) -> Response:
    cancel = threading.Event()
    watcher = asyncio.ensure_future(_until_disconnect(request, cancel))
    items = engine.stream(
        SERVICE, parsed, request_id=answer.request_id, cancel=cancel, timeout=answer.timeout
    )
    try:
        first = await anext(items)
    except BaseException:
        watcher.cancel()
        await items.aclose()
        raise
    chunk = functools.partial(
        stream_chunk, answer.chat, answer.answer_id, str(getattr(parsed, "model", "")), int(time.time())
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    events = _events(answer.chat, chunk, first, items, watcher, with_usage)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _event(payload: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _events(
    chat: bool,
    chunk: Callable[..., dict[str, Any]],
    first: BaseModel,
    items: AsyncGenerator[BaseModel, None],
    watcher: asyncio.Future[None],
    with_usage: bool,
) -> AsyncIterator[str]:
    """The stream's server-sent events; ``chunk(text, finish_reason=None)`` is one chunk's payload."""
    try:
        if chat:
            yield _event(chunk(None))
        item: BaseModel | None = first
        while item is not None:
            if isinstance(item, TextGenerationChunk):
                yield _event(chunk(item.text))
                item = await anext(items)
                continue
            assert isinstance(item, TextGenerationResponse)
            yield _event(chunk("", item.finish_reason))
            if with_usage:
                yield _event({**chunk(""), "choices": [], "usage": usage(item)})
            yield "data: [DONE]\n\n"
            item = None
    except GenserveError as err:  # mid-stream: the status is sent, so say it in the stream
        yield _event(OpenAIError.from_genserve(err).body())
    finally:
        watcher.cancel()
        await items.aclose()


def _model_card(models: ModelManager, name: str) -> dict[str, Any]:
    path = models.registry.find(ModelKind.LLM, name)  # llm/, or a single-file LLM in text_encoders/
    created = int(path.stat().st_mtime) if path is not None and path.exists() else 0
    return {"id": name, "object": "model", "created": created, "owned_by": "genserve"}


router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", summary="The language models in models/llm/ (OpenAI's model list)")
async def list_models(models: ModelManagerDep) -> JSONResponse:
    names = models.registry.available(ModelKind.LLM)
    return JSONResponse({"object": "list", "data": [_model_card(models, name) for name in names]})


@router.get("/models/{model}", summary="One language model (OpenAI's model object)")
async def get_model(model: str, models: ModelManagerDep) -> JSONResponse:
    if model not in models.registry.available(ModelKind.LLM):
        message = f"The model {model!r} does not exist in models/llm/"
        return _error(OpenAIError(404, message, "model", "model_not_found"))
    return JSONResponse(_model_card(models, model))


@router.post("/chat/completions", summary="Chat completion", openapi_extra=_schema(ChatCompletionBody))
async def chat_completions(request: Request, engine: EngineDep, limits: ServerSettingsDep) -> Response:
    return await _answer(request, engine, limits, chat=True)


@router.post("/completions", summary="Text completion", openapi_extra=_schema(CompletionBody))
async def completions(request: Request, engine: EngineDep, limits: ServerSettingsDep) -> Response:
    return await _answer(request, engine, limits, chat=False)
