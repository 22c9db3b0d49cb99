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
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

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


class _Door:
    def __init__(self, engine: Engine, models: ModelManager, limits: ServerSettings) -> None:
        self.engine = engine
        self.models = models
        self.limits = limits

    async def answer(self, request: Request, chat: bool) -> Response:
        mapper: FieldMapper = chat_fields if chat else completion_fields
        names: dict[str, str] = {}
        try:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise OpenAIError(400, "the request body is not valid JSON", None, "invalid_json") from None
            fields, names = mapper(body)
            parsed = parse_request(self.engine.service(SERVICE), fields)
            timeout = request_timeout(request, self.limits)
            rid = request_id_of(request) or str(uuid.uuid4())
            answer_id = f"{'chatcmpl' if chat else 'cmpl'}-{rid}"
            if body.get("stream") is True:
                options = body.get("stream_options")
                with_usage = isinstance(options, Mapping) and options.get("include_usage") is True
                return await self._stream(request, parsed, rid, answer_id, timeout, chat, with_usage)
            work = self.engine.submit(SERVICE, parsed, request_id=rid, timeout=timeout)
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
            chat_completion(answer_id, result) if chat else text_completion(answer_id, result)
        )

    async def _stream(
        self,
        request: Request,
        parsed: BaseModel,
        rid: str,
        answer_id: str,
        timeout: float,
        chat: bool,
        with_usage: bool,
    ) -> Response:
        cancel = threading.Event()
        watcher = asyncio.ensure_future(_until_disconnect(request, cancel))
        items = self.engine.stream(SERVICE, parsed, request_id=rid, cancel=cancel, timeout=timeout)
        try:
            first = await anext(items)
        except BaseException:
            watcher.cancel()
            await items.aclose()
            raise
        model = str(getattr(parsed, "model", ""))
        created = int(time.time())

        def event(payload: Mapping[str, Any]) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                if chat:
                    yield event(stream_chunk(chat, answer_id, model, created, None))
                item: BaseModel | None = first
                while item is not None:
                    if isinstance(item, TextGenerationChunk):
                        yield event(stream_chunk(chat, answer_id, model, created, item.text))
                        item = await anext(items)
                        continue
                    assert isinstance(item, TextGenerationResponse)
                    yield event(stream_chunk(chat, answer_id, model, created, "", item.finish_reason))
                    if with_usage:
                        last = stream_chunk(chat, answer_id, model, created, "")
                        yield event({**last, "choices": [], "usage": usage(item)})
                    yield "data: [DONE]\n\n"
                    item = None
            except GenserveError as err:  # mid-stream: the status is sent, so say it in the stream
                yield event(OpenAIError.from_genserve(err).body())
            finally:
                watcher.cancel()
                await items.aclose()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    def model_card(self, name: str) -> dict[str, Any]:
        path = self.models.registry.folder(ModelKind.LLM) / name
        created = int(path.stat().st_mtime) if path.exists() else 0
        return {"id": name, "object": "model", "created": created, "owned_by": "genserve"}


def openai_router(engine: Engine, models: ModelManager, limits: ServerSettings) -> APIRouter:
    door = _Door(engine, models, limits)
    router = APIRouter(prefix="/v1", tags=["openai"])

    @router.get("/models", summary="The language models in models/llm/ (OpenAI's model list)")
    async def list_models() -> JSONResponse:
        names = models.registry.available(ModelKind.LLM)
        return JSONResponse({"object": "list", "data": [door.model_card(name) for name in names]})

    @router.get("/models/{model}", summary="One language model (OpenAI's model object)")
    async def get_model(model: str) -> JSONResponse:
        if model not in models.registry.available(ModelKind.LLM):
            message = f"The model {model!r} does not exist in models/llm/"
            return _error(OpenAIError(404, message, "model", "model_not_found"))
        return JSONResponse(door.model_card(model))

    @router.post("/chat/completions", summary="Chat completion", openapi_extra=_schema(ChatCompletionBody))
    async def chat_completions(request: Request) -> Response:
        return await door.answer(request, chat=True)

    @router.post("/completions", summary="Text completion", openapi_extra=_schema(CompletionBody))
    async def completions(request: Request) -> Response:
        return await door.answer(request, chat=False)

    return router
