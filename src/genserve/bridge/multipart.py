"""The multipart reader behind ``POST /upload``: python-multipart's streaming parser, fed by hand.

Starlette's ``request.form()`` refuses a part without a ``name`` ("The Content-Disposition
header field "name" must be provided."), but the spec makes ``name`` optional (default ``file``)
and its own clients send ``Content-Disposition: attachment; filename="x.png"``. So the parsing is
python-multipart's (maintained, already a dependency) and only the bookkeeping is here: every
part's name (or None), file name (or None), type and bytes, with the limits enforced while the
body streams in, so an oversized file or one part too many stops the read at once rather than
after the whole body has been spooled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:  # a TypedDict the library declares for type checkers only
    from python_multipart.multipart import MultipartCallbacks


class MultipartError(ValueError):
    """The body is not readable multipart (no boundary, broken framing, cut short)."""


@dataclass
class RawPart:
    """One part as sent: ``name`` and ``filename`` are None when the part did not give them."""

    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def is_file(self) -> bool:
        """A part with a ``filename`` parameter is a file, whatever its disposition type (the spec's
        clients send ``attachment`` as well as ``form-data``)."""
        return self.filename is not None


def _decode(raw: bytes) -> str:
    """Header parameters are UTF-8 in practice; latin-1 keeps any other byte readable."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def boundary_of(content_type: str) -> bytes:
    """The ``boundary`` parameter of a multipart Content-Type, or MultipartError."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("the Content-Type has no boundary")
    return boundary


class PartCollector:
    """Parser callbacks that collect parts; ``on_headers`` and ``on_data`` may raise to stop the read.

    ``on_headers(part, index)`` sees each part once its headers are in (index from 0); ``on_data(part)``
    after each piece of its body is appended, to check sizes as they grow.
    """

    def __init__(
        self,
        on_headers: Callable[[RawPart, int], None],
        on_data: Callable[[RawPart], None],
    ) -> None:
        self.parts: list[RawPart] = []
        self.ended = False
        self._on_headers = on_headers
        self._on_data = on_data
        self._part = RawPart()
        self._header_name = b""
        self._header_value = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_part_end": self._end_part,
            "on_header_field": self._header_field,
            "on_header_value": self._header_val,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self._part = RawPart()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._part.headers.append((self._header_name.strip().lower(), self._header_value.strip()))
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        part = self._part
        for key, value in part.headers:
            if key == b"content-disposition":
                _, options = parse_options_header(value.decode("latin-1"))
                if b"name" in options:
                    part.name = _decode(options[b"name"])
                if b"filename" in options:
                    part.filename = _decode(options[b"filename"])
            elif key == b"content-type":
                part.content_type = value.decode("latin-1") or None
        self._on_headers(part, len(self.parts))

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._part.data += data[start:end]
        self._on_data(self._part)

    def _end_part(self) -> None:
        self.parts.append(self._part)

    def _end(self) -> None:
        self.ended = True


async def parse_multipart(
    content_type: str,
    chunks: AsyncIterator[bytes],
    on_headers: Callable[[RawPart, int], None],
    on_data: Callable[[RawPart], None],
) -> list[RawPart]:
    """Every part of the body, in order; MultipartError when it is not well-formed multipart.

    Exceptions raised by the callbacks (the caller's limits) come through unchanged.
    """
    collector = PartCollector(on_headers, on_data)
    try:
        parser = MultipartParser(boundary_of(content_type), collector.callbacks())
    except (FormParserError, ValueError) as exc:  # a boundary the parser cannot use
        raise MultipartError(f"invalid multipart boundary ({exc})") from exc
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise MultipartError(f"invalid multipart data ({exc})") from exc
    if not collector.ended:
        raise MultipartError("the body ended before the closing boundary")
    return collector.parts
