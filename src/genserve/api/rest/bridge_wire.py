"""The bridge spec's answers as the bridge's routes send them: ``{"detail": ...}`` with 400 for
every error, 204 with the detail in a header, the ``clientId`` query key, the multipart history.

Query parameters are read by hand rather than declared, so a missing ``clientId`` is the spec's
400 ``{"detail"}``, not FastAPI's 422.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse, Response

from genserve.errors import ErrorCode, GenserveError
from genserve.storage.jobs import Result

CLIENT_ID = "clientId"
# Printable ASCII but "%": what an X-Detail header carries as is; anything else is percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def detail(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def header_text(message: str) -> str:
    """``message`` as a header value: UTF-8 percent-encoded outside printable ASCII (and ``%``
    itself), so a clientId such as ``한글`` or one holding CR/LF can neither break the response
    (latin-1 only, no line breaks) nor forge a header; ASCII text stays as readable as it was."""
    return quote(message, safe=_HEADER_SAFE)


def no_content(message: str) -> Response:
    """The spec's 204 answers. HTTP forbids a body on 204 (uvicorn refuses to send one, and clients
    would not read it), so the spec's ``{"detail": ...}`` text travels in the ``X-Detail`` header,
    percent-encoded where it must be (``urllib.parse.unquote`` gives the text back)."""
    return Response(status_code=204, headers={"X-Detail": header_text(message)})


def client_id_of(request: Request | WebSocket) -> str:
    value = request.query_params.get(CLIENT_ID, "").strip()
    if not value:
        raise GenserveError(ErrorCode.INVALID_INPUT, "clientId is required (query ?clientId=...)")
    if len(value) > 200:
        raise GenserveError(ErrorCode.INVALID_INPUT, "clientId is longer than 200 characters")
    return value


def multipart(results: list[tuple[Result, bytes]]) -> Response:
    """One form-data part per output, named by its result name, with its file name and type."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for result, data in results:
        name = result.name.replace('"', "_")
        filename = str(result.metadata.get("filename", result.name)).replace('"', "_")
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {result.content_type}\r\n\r\n"
        )
        chunks += [head.encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(chunks), media_type=f"multipart/form-data; boundary={boundary}")
