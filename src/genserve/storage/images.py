"""Images from clients, bounded before they are decoded, refused in the client's own terms.

Pillow reads only the header on ``Image.open``; the pixels come with ``load``. So the size is
checked between the two, against ``storage.max_image_pixels``: a few hundred bytes that declare
30000x30000 pixels are refused without allocating them. Only raster formats a client would send
are opened (never EPS, whose reader runs Ghostscript). Every failure becomes INVALID_INPUT naming
the field and the name the client gave, never the file's server path.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from genserve.config.storage import DEFAULT_MAX_IMAGE_PIXELS
from genserve.errors import ErrorCode, GenserveError
from genserve.storage.paths import Sandbox, shown

# Pillow's format ids. JPEG's reader also opens the JPEGs that carry extra pictures (phone
# cameras), which Pillow then reports as MPO.
READABLE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
MAX_REASON_CHARS = 200
# What Pillow raises for bytes it cannot decode, besides OSError and its bomb guard.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


class ImageTooLarge(Exception):
    """The header declares more pixels than allowed; the message says how many."""


def pixel_limit_reason(width: int, height: int, max_pixels: int) -> str | None:
    """Why a ``width`` x ``height`` image is refused, or None when it is within ``max_pixels``."""
    if width * height <= max_pixels:
        return None
    return (
        f"{width}x{height} pixels, more than {max_pixels / 1e6:.3g} megapixels "
        f"(storage.max_image_pixels = {max_pixels})"
    )


@contextmanager
def bounded_image(source: Path | bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """The image opened lazily, once its header's size is within ``max_pixels``; nothing is
    decoded until the caller loads, converts or verifies it."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fp, formats=READABLE_FORMATS) as image:
        reason = pixel_limit_reason(image.width, image.height, max_pixels)
        if reason is not None:
            raise ImageTooLarge(reason)
        yield image


def _reason(exc: BaseException, source: Path | bytes) -> str:
    """Pillow's explanation without the file's path (it names it in several messages)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    if isinstance(source, Path):
        text = text.replace(os.fspath(source), "the file")
    return text[:MAX_REASON_CHARS]


@contextmanager
def reading_image(
    source: Path | bytes, field: str, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Iterator[Image.Image]:
    """``bounded_image``, with every failure inside the block (opening, loading, converting,
    verifying) turned into INVALID_INPUT naming ``field`` and ``name``, as the client sent it."""
    label = f"{field}: {shown(name)}"
    try:
        with bounded_image(source, max_pixels) as image:
            yield image
    except ImageTooLarge as exc:
        raise GenserveError(ErrorCode.INVALID_INPUT, f"{label} is {exc}", field=field) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{label} is too large to decode safely: {_reason(exc, source)} "
            f"(storage.max_image_pixels = {max_pixels})",
            field=field,
        ) from exc
    except UnidentifiedImageError as exc:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{label} is not an image (cannot identify image file; {', '.join(READABLE_FORMATS)} are read)",
            field=field,
        ) from exc
    except DECODE_ERRORS as exc:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{label} is not a readable image ({_reason(exc, source)})",
            field=field,
        ) from exc


def open_image(
    path: Path, field: str, name: str | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """The image file as RGB, decoded only once its size is known to be within ``max_pixels``.
    ``name`` is how the client called it (the file's own name by default)."""
    with reading_image(path, field, path.name if name is None else name, max_pixels) as image:
        image.load()
        return image.convert("RGB")


def load_image(sandbox: Sandbox, raw: str, field: str) -> Image.Image:
    """The RGB image a request names, inside the sandbox's roots and pixel limit: the services'
    one image loader, so each refusal names the field and the path as the client wrote it."""
    path = sandbox.readable_file(raw, field, ErrorCode.IMAGE_NOT_FOUND)
    return open_image(path, field, raw, sandbox.max_image_pixels)
