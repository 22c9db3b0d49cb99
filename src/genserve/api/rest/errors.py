"""One place where every failure becomes the spec's error JSON with the table's HTTP status.

Handlers are installed once on the app (as MLServer does), so routes just raise. Validation
errors from FastAPI become INVALID_INPUT naming each bad field; unknown routes and methods keep
their 404/405 but in the same format. Anything else is turned into INTERNAL by the request
middleware, which logs the traceback and never sends it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from genserve.errors import ErrorCode, GenserveError


class ErrorResponse(BaseModel):
    """The spec's error format, shared by every protocol."""

    status: Literal["error"] = "error"
    request_id: str | None
    error_code: str = Field(examples=["MODEL_NOT_FOUND"])
    error_message: str = Field(examples=["VAE model not found: qwen_image_vae.safetensors"])
    timestamp: str = Field(examples=["2024-11-06T12:00:00Z"])
    details: dict[str, Any] | None = None


_DOCUMENTED = {
    400: "Invalid input (INVALID_INPUT): the message names the field.",
    403: "Path outside the configured roots (PERMISSION_DENIED) or output dir not writable.",
    404: "Model, image or input file not found.",
    413: "Request body larger than server.max_body_bytes.",
    429: "Queue full (RESOURCE_EXHAUSTED); retry after the Retry-After header's seconds.",
    500: "ENCODING_FAILED, SAMPLING_FAILED, DECODING_FAILED or INTERNAL.",
    504: "The request ran past its timeout (TIMEOUT).",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in _DOCUMENTED.items()
}


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(err: GenserveError, request_id: str | None, retry_after_s: int = 1) -> Response:
    headers = {"Retry-After": str(retry_after_s)} if err.code is ErrorCode.RESOURCE_EXHAUSTED else None
    if err.code is ErrorCode.UNAUTHENTICATED:
        headers = {"WWW-Authenticate": "Bearer"}
    body = json.dumps(err.to_dict(request_id), default=str)
    return Response(body, status_code=err.mapping.http_status, media_type="application/json", headers=headers)


def validation_error(exc: RequestValidationError) -> GenserveError:
    """INVALID_INPUT naming each bad field as a client wrote it (``sampling_params.steps``)."""
    problems: list[str] = []
    fields: list[str] = []
    for item in exc.errors():
        loc = [str(p) for p in item.get("loc", ())]
        source = loc[0] if loc and loc[0] in ("body", "query", "path", "header") else "body"
        where = ".".join(loc[1:] if loc and loc[0] == source else loc) or "body"
        if item.get("type") == "json_invalid":
            where, message = "body", "not valid JSON"
        else:
            message = item.get("msg", "invalid")
        label = where if source == "body" else f"{where} ({source} parameter)"
        problems.append(f"{label}: {message}")
        fields.append(where)
    return GenserveError(ErrorCode.INVALID_INPUT, "invalid request: " + "; ".join(problems), fields=fields)


def http_error(exc: StarletteHTTPException, path: str) -> GenserveError:
    if exc.status_code == 404:
        return GenserveError(ErrorCode.NOT_FOUND, f"no such endpoint: {path}")
    if exc.status_code == 405:
        return GenserveError(ErrorCode.METHOD_NOT_ALLOWED, f"method not allowed on {path}")
    if exc.status_code == 413:
        return GenserveError(ErrorCode.PAYLOAD_TOO_LARGE, str(exc.detail))
    if exc.status_code < 500:
        return GenserveError(ErrorCode.INVALID_INPUT, str(exc.detail))
    return GenserveError(ErrorCode.INTERNAL, str(exc.detail))


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    async def on_genserve_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GenserveError)
        return error_response(exc, request_id_of(request), retry_after_s)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc), request_id_of(request), retry_after_s)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        err = http_error(exc, request.url.path)
        response = error_response(err, request_id_of(request), retry_after_s)
        response.status_code = exc.status_code  # keep 404/405 even where the code maps alike
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    app.add_exception_handler(GenserveError, on_genserve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
