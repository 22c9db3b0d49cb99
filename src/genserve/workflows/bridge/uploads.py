"""The bridge's ``POST /upload``: multipart files in, server-chosen names in the input folder out.

The client names each file by its form field and gets back the name the server stored it under,
which it then puts into a workflow input. Nothing the client sends reaches the file system as a
path: the stored name is random plus a sanitized stem plus the extension of the format Pillow
detected, so a ``../x.png`` or a script renamed ``.png`` cannot land anywhere or pose as an
image. A request is all or nothing: every part is checked before the first byte is written, and
a write that fails removes what this request already wrote, so a client never has to guess which
of its files made it.
"""

from __future__ import annotations

import io
import re
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from genserve.errors import ErrorCode, GenserveError
from genserve.storage.artifacts import write_bytes

# Pillow's format name -> the extension the stored file gets. MPO is how Pillow reports a JPEG
# that carries extra pictures (phone cameras write them); every JPEG reader opens it as a JPEG.
FORMAT_EXTENSIONS: dict[str, str] = {
    "PNG": "png",
    "JPEG": "jpg",
    "MPO": "jpg",
    "WEBP": "webp",
    "BMP": "bmp",
    "GIF": "gif",
}
ACCEPTED_FORMATS = "PNG, JPEG, WEBP, BMP or GIF"
MAX_PIXELS = 50_000_000
MAX_FIELD_CHARS = 200
MAX_STEM_CHARS = 64

_UNSAFE_STEM = re.compile(r"[^A-Za-z0-9._-]")
_CHUNK = 256 * 1024
# A plain text field is refused anyway; this only bounds what is held to name it in the error.
_MAX_TEXT_FIELD_BYTES = 64 * 1024
_MB = 1024 * 1024


@dataclass(frozen=True)
class UploadPart:
    """One file of a request, held in memory once it passed the size limit."""

    field: str
    filename: str
    content_type: str | None
    data: bytes


def _refuse(field: str, message: str) -> GenserveError:
    return GenserveError(ErrorCode.INVALID_INPUT, f"upload part {field!r}: {message}", field=field)


def _refuse_request(message: str) -> GenserveError:
    """A fault of the request as a whole, before any part can be blamed."""
    return GenserveError(ErrorCode.INVALID_INPUT, f"upload: {message}", field="upload")


def _megabytes(limit: int) -> str:
    """The limit as people read it; tiny limits (tests, odd configs) would otherwise show 0.0 MB."""
    return f"{limit / _MB:.1f} MB" if limit >= _MB // 10 else f"{limit} bytes"


def _too_large(field: str, max_file_bytes: int) -> GenserveError:
    return _refuse(field, f"larger than {_megabytes(max_file_bytes)}")


async def read_upload_parts(request: Request, *, max_file_bytes: int, max_files: int) -> list[UploadPart]:
    """The request's file parts in order; every refusal is INVALID_INPUT naming the part.

    Starlette spools file parts to disk while parsing, so an oversized file is read back in
    chunks and dropped as soon as it passes the limit instead of being copied into memory whole.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise _refuse_request(f"expected Content-Type multipart/form-data, got {content_type or 'none'!r}")
    try:
        # max_fields = max_files lets a stray text field through the parser, so that the
        # refusal below can name it instead of Starlette's anonymous "too many fields".
        async with request.form(
            max_files=max_files, max_fields=max_files, max_part_size=_MAX_TEXT_FIELD_BYTES
        ) as form:
            items = list(form.multi_items())
            if not items:
                raise _refuse_request("no file parts in the request")
            if len(items) > max_files:
                raise _refuse_request(f"{len(items)} parts, at most {max_files} files per request")
            parts: list[UploadPart] = []
            for field, value in items:
                if not isinstance(value, UploadFile):
                    raise _refuse(field, "expected a file, got a plain text field")
                data = await _read_limited(value, field, max_file_bytes)
                parts.append(UploadPart(field, value.filename or "", value.content_type, data))
            return parts
    except MultiPartException as exc:
        raise _refuse_request(f"cannot read the multipart body: {exc.message}") from exc
    except HTTPException as exc:
        # Inside an app Starlette turns its MultiPartException into a 400 HTTPException.
        raise _refuse_request(f"cannot read the multipart body: {exc.detail}") from exc


async def _read_limited(upload: UploadFile, field: str, max_file_bytes: int) -> bytes:
    if upload.size is not None and upload.size > max_file_bytes:
        raise _too_large(field, max_file_bytes)
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(_CHUNK):
        total += len(chunk)
        if total > max_file_bytes:
            raise _too_large(field, max_file_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def save_uploads(parts: Sequence[UploadPart], folder: Path, *, max_file_bytes: int) -> dict[str, str]:
    """Store every part under a fresh name in ``folder``; ``{field: saved name}`` in request order.

    Validation of all parts comes first so that a bad third file leaves the first two unwritten;
    this is blocking work (Pillow, fsync): call it from a thread in async code.
    """
    seen: set[str] = set()
    extensions: list[str] = []
    for part in parts:
        _check_field(part.field, seen)
        _check_filename(part.field, part.filename)
        if len(part.data) > max_file_bytes:
            raise _too_large(part.field, max_file_bytes)
        extensions.append(image_extension(part.field, part.filename, part.data))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenserveError(
            ErrorCode.OUTPUT_DIR_NOT_WRITABLE,
            f"upload: cannot create the input folder: {exc}",
            field="upload",
        ) from exc
    saved: dict[str, str] = {}
    written: list[Path] = []
    try:
        for part, extension in zip(parts, extensions, strict=True):
            path = _fresh_path(folder, part.filename, extension)
            try:
                write_bytes(path, part.data, durable=True)
            except GenserveError as exc:
                raise GenserveError(
                    exc.code,
                    f"upload part {part.field!r}: cannot store {path.name}: {exc.__cause__ or exc.message}",
                    field=part.field,
                ) from exc
            written.append(path)
            saved[part.field] = path.name
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return saved


def _check_field(field: str, seen: set[str]) -> None:
    """The field is the key of the answer: it must exist, stay short and be unique to be a key."""
    if not field:
        raise _refuse(field, "the form field name is empty")
    if len(field) > MAX_FIELD_CHARS:
        raise _refuse(field[:40] + "...", f"the form field name is longer than {MAX_FIELD_CHARS} characters")
    if field in seen:
        raise _refuse(field, "the form field name appears twice in one request")
    seen.add(field)


def _check_filename(field: str, filename: str) -> None:
    """Browsers and curl send bare names; anything path-like is an attack, refused rather than fixed."""
    if not filename.strip():
        raise _refuse(field, "the file name is empty")
    if "\x00" in filename:
        raise _refuse(field, f"file name {filename!r} contains a NUL byte")
    if "/" in filename or "\\" in filename or filename == "..":
        raise _refuse(field, f"file name {filename!r} must be a plain name (no folders)")
    if filename.startswith("."):
        raise _refuse(field, f"file name {filename!r} must not start with '.'")


def image_extension(field: str, filename: str, data: bytes) -> str:
    """The extension of the format the bytes really are; the name and declared type are not trusted.

    The pixel count is checked from the header before ``verify`` so that a decompression bomb is
    refused without decoding it.
    """
    detected: str | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                detected = image.format or "unknown"
                width, height = image.size
                if detected not in FORMAT_EXTENSIONS:
                    raise _refuse(field, f"{filename!r} is a {detected} image, expected {ACCEPTED_FORMATS}")
                if width * height > MAX_PIXELS:
                    raise _refuse(
                        field,
                        f"{filename!r} is {width}x{height} pixels, more than {MAX_PIXELS / 1e6:g} megapixels",
                    )
                image.verify()
                return FORMAT_EXTENSIONS[detected]
    except GenserveError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _refuse(field, f"{filename!r} is too large to decode safely ({exc})") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        if detected is None or isinstance(exc, Image.UnidentifiedImageError):
            raise _refuse(field, f"{filename!r} is not an image ({ACCEPTED_FORMATS})") from exc
        raise _refuse(field, f"{filename!r} is a damaged {detected} image ({exc})") from exc


def sanitized_stem(filename: str) -> str:
    """What is left of the client's name is only a hint for people browsing the folder."""
    return _UNSAFE_STEM.sub("_", Path(filename).stem)[:MAX_STEM_CHARS] or "upload"


def _fresh_path(folder: Path, filename: str, extension: str) -> Path:
    """48 random bits make a clash all but impossible; the check catches the rare one that is left."""
    stem = sanitized_stem(filename)
    while True:
        path = folder / f"{uuid.uuid4().hex[:12]}_{stem}.{extension}"
        if not path.exists():
            return path
