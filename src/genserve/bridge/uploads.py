"""The bridge's ``POST /upload``: multipart files in, server-chosen names in the input folder out.

The client names each file by its form field and gets back the name the server stored it under,
which it then puts into a workflow input. Nothing the client sends reaches the file system as a
path: the stored name is random plus a sanitized stem plus the extension of the format Pillow
detected, so a ``../x.png`` or a script renamed ``.png`` cannot land anywhere or pose as an
image. A request is all or nothing: every part is checked before the first byte is written, and
a write that fails removes what this request already wrote, so a client never has to guess which
of its files made it.

Bridge uploads live in their own subfolder of the input folder (``BRIDGE_UPLOADS``), answered as
``bridge-uploads/<name>``: ComfyUI's ``/object_info`` does not list them and its ``/upload/image``
cannot overwrite them, so one client's image is neither visible to nor replaceable by another.
They are deleted once the jobs naming them are collected (``referenced_uploads``), and any left
behind (never used, or their jobs forgotten) once older than the retention (``sweep_uploads``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.requests import ClientDisconnect, Request

from genserve.bridge.multipart import MultipartError, RawPart, parse_multipart
from genserve.config.storage import DEFAULT_MAX_IMAGE_PIXELS
from genserve.errors import ErrorCode, GenserveError
from genserve.storage.artifacts import write_bytes
from genserve.storage.images import ImageTooLarge, bounded_image
from genserve.workflows.nodes.image import BRIDGE_UPLOADS

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
MAX_FIELD_CHARS = 200
MAX_STEM_CHARS = 64

# The spec's default for a part sent without a name.
DEFAULT_FIELD = "file"

_UNSAFE_STEM = re.compile(r"[^A-Za-z0-9._-]")
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
    """The request's file parts in order, each under its key; every refusal is INVALID_INPUT naming
    the part.

    A part without a ``name`` is the spec's default ``file``; several of them get ``file``,
    ``file_2``, ``file_3``... (skipping names other parts gave), so none overwrites another in the
    answer. Limits are checked while the body streams in: a part too many or a file past the size
    limit stops the read there.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise _refuse_request(f"expected Content-Type multipart/form-data, got {content_type or 'none'!r}")
    seen: list[RawPart] = []
    labels: list[str] = []

    def on_headers(part: RawPart, index: int) -> None:
        if index >= max_files:
            raise _refuse_request(f"more than {max_files} parts, at most {max_files} files per request")
        seen.append(part)
        labels.append(_keys(seen)[-1])  # as named in the answer (unless a later part takes the name)
        if not part.is_file:
            raise _refuse(labels[-1], "expected a file, got a plain text field")

    def on_data(part: RawPart) -> None:
        if len(part.data) > max_file_bytes:
            raise _too_large(labels[-1], max_file_bytes)

    try:
        raw = await parse_multipart(content_type, request.stream(), on_headers, on_data)
    except MultipartError as exc:
        raise _refuse_request(f"cannot read the multipart body: {exc}") from exc
    except ClientDisconnect as exc:
        raise _refuse_request("the client went away before the body was complete") from exc
    if not raw:
        raise _refuse_request("no file parts in the request")
    return [
        UploadPart(key, part.filename or "", part.content_type, bytes(part.data))
        for key, part in zip(_keys(raw), raw, strict=True)
    ]


def _keys(parts: list[RawPart]) -> list[str]:
    """Each part's key in the answer: its own name, or the first free of ``file``, ``file_2``...

    Named parts keep their names even when repeated (``save_uploads`` refuses the repeat, naming
    it); unnamed ones never take a name another part gave.
    """
    given = {part.name for part in parts if part.name is not None}
    keys: list[str] = []
    counter = 1
    for part in parts:
        if part.name is not None:
            keys.append(part.name)
            continue
        while True:
            key = DEFAULT_FIELD if counter == 1 else f"{DEFAULT_FIELD}_{counter}"
            counter += 1
            if key not in given:
                break
        keys.append(key)
    return keys


def save_uploads(
    parts: Sequence[UploadPart],
    folder: Path,
    *,
    max_file_bytes: int,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> dict[str, str]:
    """Store every part under a fresh name in ``folder``; ``{field: saved name}`` in request order.
    Each image has at most ``max_pixels`` (``storage.max_image_pixels``).

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
        extensions.append(image_extension(part.field, part.filename, part.data, max_pixels))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenserveError(
            ErrorCode.OUTPUT_DIR_NOT_WRITABLE,
            f"upload: cannot create the input folder: {exc.strerror or type(exc).__name__}",
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
                    f"upload part {part.field!r}: {exc.message}",
                    field=part.field,
                ) from exc
            written.append(path)
            saved[part.field] = path.name
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return saved


def save_bridge_uploads(
    parts: Sequence[UploadPart],
    input_dir: Path,
    *,
    max_file_bytes: int,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> dict[str, str]:
    """``save_uploads`` into the bridge's own subfolder; the names answered are relative to the
    input folder (``bridge-uploads/<name>``), as a workflow's LoadImage names them."""
    folder = input_dir / BRIDGE_UPLOADS
    saved = save_uploads(parts, folder, max_file_bytes=max_file_bytes, max_pixels=max_pixels)
    return {field: f"{BRIDGE_UPLOADS}/{name}" for field, name in saved.items()}


def referenced_uploads(graph: Mapping[str, Any]) -> set[str]:
    """The bridge uploads a graph names: plain file names in the uploads subfolder."""
    prefix = BRIDGE_UPLOADS + "/"
    found: set[str] = set()
    for node in graph.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        for value in inputs.values() if isinstance(inputs, Mapping) else ():
            if isinstance(value, str) and value.startswith(prefix):
                name = value[len(prefix) :]
                if name and not {"/", "\\", "\x00"} & set(name) and name not in {".", ".."}:
                    found.add(name)
    return found


def delete_uploads(folder: Path, names: Iterable[str]) -> list[str]:
    """Remove these plain names from the uploads folder; the ones that were there."""
    deleted = []
    for name in names:
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            continue
        deleted.append(name)
    return deleted


def sweep_uploads(folder: Path, older_than_s: float, keep: Iterable[str]) -> list[str]:
    """Remove uploads last written more than ``older_than_s`` ago, except ``keep`` (names that
    queued or running jobs still need, however old: a job has no time cap)."""
    if not folder.is_dir():
        return []
    cutoff = time.time() - older_than_s
    kept = set(keep)
    old = []
    for path in folder.iterdir():
        try:
            if path.name not in kept and path.is_file() and path.stat().st_mtime < cutoff:
                old.append(path.name)
        except OSError:
            continue
    return delete_uploads(folder, old)


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


def image_extension(
    field: str, filename: str, data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> str:
    """The extension of the format the bytes really are; the name and declared type are not trusted.

    The pixel count is checked from the header before ``verify`` (``bounded_image``), so that a
    decompression bomb is refused without decoding it.
    """
    detected: str | None = None
    try:
        with bounded_image(data, max_pixels) as image:
            detected = image.format or "unknown"
            if detected not in FORMAT_EXTENSIONS:
                raise _refuse(field, f"{filename!r} is a {detected} image, expected {ACCEPTED_FORMATS}")
            image.verify()
            return FORMAT_EXTENSIONS[detected]
    except GenserveError:
        raise
    except ImageTooLarge as exc:
        raise _refuse(field, f"{filename!r} is {exc}") from None
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
