"""OpenAI's wire format <-> the text_generation service: request fields, answer shapes, error shape.

The OpenAI-compatible routes speak OpenAI's JSON, not genserve's: bodies are mapped field by
field onto ``TextGenerationRequest``, and every failure answers
``{"error": {"message", "type", "param", "code"}}``, which is what OpenAI clients parse. Fields
genserve cannot honour are refused by name when set to anything but their default (a silently
ignored ``tools`` or ``logprobs`` would be a wrong answer); fields that change nothing about the
text (``user``, ``metadata``, ``store`` ...) and unknown extras are ignored, so clients that send
them by default keep working.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from genserve.errors import GenserveError
from genserve.services.text.generation import TextGenerationResponse

# Field -> "is this value the default (so harmless)?"
_REFUSED: dict[str, Callable[[Any], bool]] = {
    "tools": lambda v: not v,
    "tool_choice": lambda v: v in (None, "none", "auto"),
    "functions": lambda v: not v,
    "function_call": lambda v: v in (None, "none", "auto"),
    "logprobs": lambda v: v in (None, False, 0),
    "top_logprobs": lambda v: v in (None, 0),
    "logit_bias": lambda v: not v,
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "audio": lambda v: v is None,
    "modalities": lambda v: v is None or v == ["text"],
    "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
    "echo": lambda v: v in (None, False),
    "best_of": lambda v: v in (None, 1),
    "suffix": lambda v: v in (None, ""),
}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class OpenAIError(Exception):
    """A failure in OpenAI's shape; ``param`` names the request field at fault, when one is."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @classmethod
    def from_genserve(cls, err: GenserveError, names: Mapping[str, str] | None = None) -> OpenAIError:
        """The same failure for OpenAI clients; genserve field names become the client's names."""
        field = err.details.get("field")
        fields = err.details.get("fields")
        if field is None and isinstance(fields, list) and fields:
            field = str(fields[0]).split(".")[0]
        if isinstance(field, str):
            field = (names or {}).get(field, field)
        return cls(
            err.mapping.http_status, err.message, field if isinstance(field, str) else None, err.code.lower()
        )

    def body(self) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _bad(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param, "invalid_value")


def _number(body: Mapping[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise _bad(key, f"must be {'a number' if kind is float else 'an integer'}, got {value!r}")
    return value


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n not in (None, 1):
        raise OpenAIError(400, f"n: only n=1 is supported, got {n!r}", "n", "unsupported_value")
    for key, is_default in _REFUSED.items():
        if key in body and not is_default(body[key]):
            raise OpenAIError(
                400, f"{key}: not supported by this server (leave it out)", key, "unsupported_parameter"
            )


def _common_fields(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Fields shared by both routes, and which client name each request field came from."""
    if not isinstance(body, Mapping):
        raise OpenAIError(400, "the request body must be a JSON object", None, "invalid_value")
    _refuse_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "a model name is required")
    fields: dict[str, Any] = {"model": model}
    names: dict[str, str] = {}
    limit_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, limit_key, int)
    if max_tokens is not None:
        fields["max_tokens"] = max_tokens
        names["max_tokens"] = limit_key
    temperature = _number(body, "temperature", float)
    fields["temperature"] = 1.0 if temperature is None else temperature  # OpenAI's default
    for key, kind in (("top_p", float), ("top_k", int), ("seed", int)):
        value = _number(body, key, kind)
        if value is not None:
            fields[key] = value
    stop = body.get("stop")
    if isinstance(stop, str):
        fields["stop"] = [stop]
    elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        fields["stop"] = stop
    elif stop is not None:
        raise _bad("stop", "must be a string or a list of strings")
    if not isinstance(body.get("stream", False), bool) and body.get("stream") is not None:
        raise _bad("stream", "must be true or false")
    return fields, names


def chat_fields(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A chat completions body as ``TextGenerationRequest`` fields (messages keep their order)."""
    fields, names = _common_fields(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "a non-empty list of messages is required")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, Mapping):
            raise _bad("messages", f"messages[{i}] must be an object")
        given = message.get("role")
        role = _ROLES.get(given) if isinstance(given, str) else None
        if role is None:
            raise _bad("messages", f"messages[{i}].role {given!r} is not supported")
        text, images = _content(message.get("content"), i)
        if images and (role != "user" or i != len(raw) - 1):
            raise _bad("messages", f"messages[{i}]: images are read in the last message only, a user's")
        messages.append({"role": role, "content": text})
        if images:
            fields["images"] = images
    fields["messages"] = messages
    return fields, names


def _content(content: Any, i: int) -> tuple[str, list[str]]:
    """The text of a message and the data: URLs of its ``image_url`` parts (a vision-language
    model sees them before the text)."""
    if isinstance(content, str):
        return content, []
    if isinstance(content, list):
        parts, images = [], []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind == "image_url":
                images.append(_image_url(part.get("image_url"), f"messages[{i}].content[{j}]"))
            else:
                raise _bad(
                    "messages", f"messages[{i}].content[{j}]: only text and image_url parts are supported"
                )
        return "".join(parts), images
    raise _bad("messages", f"messages[{i}].content must be a string or a list of text and image_url parts")


def _image_url(value: Any, where: str) -> str:
    url = value.get("url") if isinstance(value, Mapping) else value
    detail = value.get("detail", "auto") if isinstance(value, Mapping) else "auto"
    if detail not in (None, "auto"):
        raise _bad(
            "messages",
            f"{where}: image_url.detail {detail!r} is not supported (the model's own sizing applies)",
        )
    if not isinstance(url, str) or not url.startswith("data:"):
        raise _bad("messages", f"{where}: send the image inline as a data: URL (remote URLs are not fetched)")
    return url


def completion_fields(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A (legacy) completions body as ``TextGenerationRequest`` fields: one prompt string."""
    fields, names = _common_fields(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt", "must be one string (token arrays and batches are not supported)")
    fields["prompt"] = prompt
    return fields, names


# -- answers ------------------------------------------------------------------------------------


def usage(result: TextGenerationResponse) -> dict[str, int]:
    total = result.prompt_tokens + result.completion_tokens
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": total,
    }


def chat_completion(answer_id: str, result: TextGenerationResponse) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": result.text},
        "finish_reason": result.finish_reason,
        "logprobs": None,
    }
    return {
        "id": answer_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [choice],
        "usage": usage(result),
    }


def text_completion(answer_id: str, result: TextGenerationResponse) -> dict[str, Any]:
    choice = {"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}
    return {
        "id": answer_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [choice],
        "usage": usage(result),
    }


def stream_chunk(
    chat: bool, answer_id: str, model: str, created: int, text: str | None, finish_reason: str | None = None
) -> dict[str, Any]:
    """One server-sent event's payload; ``text`` None is the chat's opening role-only delta."""
    if chat:
        delta: dict[str, Any] = {}
        if text is None:
            delta = {"role": "assistant", "content": ""}
        elif text:
            delta = {"content": text}
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason,
            "logprobs": None,
        }
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
    return {
        "id": answer_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }
