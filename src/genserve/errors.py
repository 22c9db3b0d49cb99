"""The one error type services raise, and the one table that maps it onto every protocol.

Doors never invent status codes: REST, Kafka and the drop folder read ``http_status``; gRPC
reads ``grpc_status`` (a ``grpc.StatusCode`` member name, so this module needs no grpcio);
the CLI exits with ``exit_code``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    # The pipeline spec's codes.
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND"
    INVALID_INPUT = "INVALID_INPUT"
    ENCODING_FAILED = "ENCODING_FAILED"
    SAMPLING_FAILED = "SAMPLING_FAILED"
    DECODING_FAILED = "DECODING_FAILED"
    OUTPUT_DIR_NOT_WRITABLE = "OUTPUT_DIR_NOT_WRITABLE"
    # General codes shared by every API.
    NOT_FOUND = "NOT_FOUND"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    INTERNAL = "INTERNAL"
    # Protocol-level refusals (a door answers these before any service runs).
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNAVAILABLE = "UNAVAILABLE"
    ALREADY_EXISTS = "ALREADY_EXISTS"


@dataclass(frozen=True)
class ErrorMapping:
    http_status: int
    grpc_status: str
    exit_code: int


ERROR_TABLE: dict[ErrorCode, ErrorMapping] = {
    ErrorCode.INVALID_INPUT: ErrorMapping(400, "INVALID_ARGUMENT", 3),
    ErrorCode.MODEL_NOT_FOUND: ErrorMapping(404, "NOT_FOUND", 4),
    ErrorCode.IMAGE_NOT_FOUND: ErrorMapping(404, "NOT_FOUND", 5),
    ErrorCode.OUTPUT_DIR_NOT_WRITABLE: ErrorMapping(403, "PERMISSION_DENIED", 6),
    ErrorCode.ENCODING_FAILED: ErrorMapping(500, "INTERNAL", 7),
    ErrorCode.SAMPLING_FAILED: ErrorMapping(500, "INTERNAL", 8),
    ErrorCode.DECODING_FAILED: ErrorMapping(500, "INTERNAL", 9),
    ErrorCode.NOT_FOUND: ErrorMapping(404, "NOT_FOUND", 10),
    ErrorCode.UNAUTHENTICATED: ErrorMapping(401, "UNAUTHENTICATED", 11),
    ErrorCode.PERMISSION_DENIED: ErrorMapping(403, "PERMISSION_DENIED", 12),
    ErrorCode.RESOURCE_EXHAUSTED: ErrorMapping(429, "RESOURCE_EXHAUSTED", 13),
    ErrorCode.CANCELLED: ErrorMapping(499, "CANCELLED", 14),
    ErrorCode.TIMEOUT: ErrorMapping(504, "DEADLINE_EXCEEDED", 15),
    ErrorCode.INTERNAL: ErrorMapping(500, "INTERNAL", 1),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorMapping(405, "UNIMPLEMENTED", 16),
    ErrorCode.PAYLOAD_TOO_LARGE: ErrorMapping(413, "RESOURCE_EXHAUSTED", 17),
    ErrorCode.UNAVAILABLE: ErrorMapping(503, "UNAVAILABLE", 18),
    ErrorCode.ALREADY_EXISTS: ErrorMapping(409, "ALREADY_EXISTS", 19),
}


class GenserveError(Exception):
    """A failure a caller can act on: a code from the table, a message naming the field and value."""

    def __init__(self, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details

    @property
    def mapping(self) -> ErrorMapping:
        return ERROR_TABLE[self.code]

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        """The spec's error JSON, shared by REST, Kafka, the drop folder and the CLI."""
        body: dict[str, Any] = {
            "status": "error",
            "request_id": request_id,
            "error_code": self.code.value,
            "error_message": self.message,
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if self.details:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"GenserveError({self.code.value}, {self.message!r})"


def as_genserve_error(exc: BaseException, fallback: ErrorCode = ErrorCode.INTERNAL) -> GenserveError:
    """Wrap an unexpected exception so that a door can still answer with a documented code; its
    text keeps the cause but not the server's paths (``without_paths``)."""
    if isinstance(exc, GenserveError):
        return exc
    return GenserveError(fallback, without_paths(f"{type(exc).__name__}: {exc}"))


# An absolute path: a slash, then names, whose first is a folder at the file system's root.
_ABSOLUTE = re.compile(r"(?<![\w.:/])/([\w.-]+)(?:/[^\s'\"<>:,;()]*)?")


def without_paths(text: str) -> str:
    """``text`` with every absolute server path cut to its last name: library errors (``OSError``,
    safetensors, PIL) quote the paths they opened, and no answer may carry one. Only paths under a
    real top-level folder are cut, so URL paths such as ``/api/v1/models`` stay as they are."""

    def cut(match: re.Match[str]) -> str:
        if not os.path.isdir("/" + match.group(1)):
            return match.group(0)
        return "<" + (match.group(0).rstrip("/").rsplit("/", 1)[-1] or "/") + ">"

    return _ABSOLUTE.sub(cut, text)
