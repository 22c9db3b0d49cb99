"""The HTTP/1.1 parser: uvicorn's httptools protocol with a bound on the request head.

httptools (llhttp) is the faster of uvicorn's two parsers, by about half a millisecond a
request here, but it buffers a request line or header of any length. h11 bounds them, and
costs that half millisecond on every request. This protocol keeps httptools and bounds the head
itself: bytes are counted from the start of a request until its headers are complete, and a
head past ``server.max_header_bytes`` gets a 400 and a closed connection, as h11 would give.

The count is per chunk the transport delivers, checked after the parser has seen the chunk, so
a chunk that completes the head is never refused for the body bytes it also carries, and what
the parser can hold is bounded by the limit plus one chunk.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TOO_LARGE = "Request head too large."


def bounded_httptools(max_head_bytes: int) -> type[HttpToolsProtocol]:
    """An httptools protocol class that refuses request heads larger than ``max_head_bytes``."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.head_bytes: int | None = 0  # None while a request's body, not its head, arrives

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.head_bytes = 0

        def on_headers_complete(self) -> None:
            self.head_bytes = None
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            # Nothing is counted until the next request begins: the rest of the chunk that ended
            # this one is its body, however large, not a head.
            self.head_bytes = None

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.head_bytes is None or self.transport.is_closing():
                return
            self.head_bytes += len(data)
            if self.head_bytes > max_head_bytes:
                self.logger.warning(HEAD_TOO_LARGE)
                self.send_400_response(HEAD_TOO_LARGE)

    return BoundedHttpToolsProtocol
