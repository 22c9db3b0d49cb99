"""The bridge spec's answers as the bridge's routes send them: ``{"detail": ...}`` with 400 for
every error (429 with ``Retry-After`` for a full queue), 204 with the detail in a header, the
``clientId`` query key, the multipart history.

Query parameters are read by hand rather than declared, so a missing ``clientId`` is the spec's
400 ``{"detail"}``, not FastAPI's 422.

The multipart history is streamed (``HistoryResponse``): its part headers come from urllib3's
multipart encoder (``RequestField``: ``"``, CR and LF percent-encoded, UTF-8 otherwise, as
browsers and curl send them), so no result name can break out of its header. Its ``on_sent``
(the deletion of what was handed out) runs only once every part went out on a connection the
client had not closed: one that breaks mid-answer deletes nothing, and a retry gets everything.
The closing boundary is sent after the deletion, so a client that read the whole answer and asks
again at once is answered 204, never the same results twice. "Went out" is the server's side:
bytes already in the operating system's socket buffers (a few MB) when the client goes away
cannot be told from bytes it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from urllib3.fields import RequestField
from urllib3.filepost import choose_boundary

from genserve.api.rest.auth import principal
from genserve.api.rest.dependencies import rest_parts
from genserve.errors import ErrorCode, GenserveError
from genserve.storage.jobs import Result

log = logging.getLogger("genserve.api.rest.bridge")

CLIENT_ID = "clientId"
# Printable ASCII but "%": what an X-Detail header carries as is; anything else is percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def detail(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def refusal(exc: GenserveError) -> JSONResponse:
    """The spec's 400 ``{"detail"}``; a full queue is 429 with ``Retry-After``, so clients back off;
    another key's clientId is 403."""
    if exc.code is ErrorCode.PERMISSION_DENIED:
        return detail(exc.message, 403)
    if exc.code is not ErrorCode.RESOURCE_EXHAUSTED:
        return detail(exc.message)
    retry_after = str(exc.details.get("retry_after_s", 1))
    return JSONResponse({"detail": exc.message}, status_code=429, headers={"Retry-After": retry_after})


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
    """The query's clientId. With API keys it belongs to the first key that used it: another key
    (unless admin) is refused with PERMISSION_DENIED, so nobody follows, collects or cancels
    another key's jobs by guessing its clientId."""
    value = request.query_params.get(CLIENT_ID, "").strip()
    if not value:
        raise GenserveError(ErrorCode.INVALID_INPUT, "clientId is required (query ?clientId=...)")
    if len(value) > 200:
        raise GenserveError(ErrorCode.INVALID_INPUT, "clientId is longer than 200 characters")
    caller, owners = principal(request), rest_parts(request).client_owners
    keyed = owners is not None and caller.owner is not None and not caller.admin
    if keyed and not owners.claim(value, caller.owner):  # type: ignore[union-attr, arg-type]
        raise GenserveError(
            ErrorCode.PERMISSION_DENIED, f"clientId {value[:64]!r} belongs to another API key"
        )
    return value


class HistoryResponse(Response):
    """One form-data part per result, named by its result name, with its file name and type."""

    chunk_size = 64 * 1024

    def __init__(self, results: Sequence[Result], on_sent: Callable[[], Awaitable[None]]) -> None:
        boundary = choose_boundary()
        self._boundary = boundary
        self._parts = [(_part_head(boundary, result), result, _size(result)) for result in results]
        self._on_sent = on_sent
        length = sum(len(head) + size + 2 for head, _, size in self._parts)
        length += len(self._end())
        super().__init__(media_type=f"multipart/form-data; boundary={boundary}")
        self.headers["content-length"] = str(length)

    def _end(self) -> bytes:
        return f"--{self._boundary}--\r\n".encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        listener = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if await self._send_parts(send, gone):
                try:
                    await self._on_sent()
                finally:
                    await send({"type": "http.response.body", "body": self._end(), "more_body": False})
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _send_parts(self, send: Send, gone: asyncio.Event) -> bool:
        """Every part (all but the closing boundary); False once the client is gone or a result
        could not be read (then the answer ends short, and nothing is deleted)."""
        try:
            for head, result, size in self._parts:
                async with contextlib.aclosing(_chunks(head, result, size, self.chunk_size)) as chunks:
                    async for chunk in chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        await asyncio.sleep(0)  # lets the disconnect, if any, be seen
                        if gone.is_set():
                            return False
        except OSError as exc:
            log.warning("GET /history ended short: %s: %s", type(exc).__name__, exc)
            return False
        return not gone.is_set()


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


def _part_head(boundary: str, result: Result) -> bytes:
    filename = str(result.metadata.get("filename", result.name))
    field = RequestField(name=result.name, data=b"", filename=filename)
    field.make_multipart(content_type=result.content_type)
    return f"--{boundary}\r\n".encode("latin-1") + field.render_headers().encode("utf-8")


def _size(result: Result) -> int:
    return len(result.data) if result.data is not None else Path(str(result.path)).stat().st_size


async def _chunks(head: bytes, result: Result, size: int, chunk_size: int) -> AsyncIterator[bytes]:
    """The part's head, its ``size`` bytes in pieces (read off the event loop), and its closing
    CRLF; OSError when the file no longer holds what the Content-Length promised."""
    yield head
    if result.data is not None:
        for start in range(0, len(result.data), chunk_size):
            yield result.data[start : start + chunk_size]
    else:
        sent = 0
        with open(str(result.path), "rb") as file:
            while sent < size and (chunk := await asyncio.to_thread(file.read, min(chunk_size, size - sent))):
                sent += len(chunk)
                yield chunk
        if sent != size:
            raise OSError(f"result {result.name!r} changed size while it was sent")
    yield b"\r\n"
