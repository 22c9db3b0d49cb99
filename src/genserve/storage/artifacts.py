"""Files that pass between services: atomic writes, safe tensor files, images.

Tensors are saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``, so a
file from the wire can never unpickle arbitrary objects. Every write goes to a temporary file in
the target folder and is renamed into place, so a reader never sees half a file. Images are read
by ``storage.images`` (bounded before decoding); ``open_image`` is that reader.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from PIL import Image

from genserve.errors import ErrorCode, GenserveError
from genserve.storage.images import open_image as open_image

IMAGE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_PLAIN_TAG = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A temp file is named after its target, cut so that ".{name}.{8 random}.tmp" fits in 255 bytes
# whatever the target's length.
TEMP_NAME_BYTES = 64


def file_tag(request_id: str) -> str:
    """The request id as it appears in output file names, one tag per id.

    An id that is already plain is kept as it is (every name puts a prefix before it, so even a
    leading dot is harmless). Any other (``/``, ``:``, over 64 characters) keeps its plain
    characters and gains a digest of the whole id, so two ids that differ only in characters a
    file name cannot hold never share output files. A tag is plain, so tagging twice changes nothing.
    """
    if _PLAIN_TAG.fullmatch(request_id):
        return request_id
    plain = re.sub(r"[^A-Za-z0-9._-]", "", request_id)[:48]
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:12]
    return f"{plain}-{digest}" if plain else digest


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], durable: bool = False) -> Path:
    """Write through ``write(fileobj)`` into a temp file beside ``path``, then rename it into place.

    The rename alone makes the file appear whole or not at all. ``durable`` adds an fsync so it
    also survives a power cut: worth it for final outputs, not for intermediate tensors.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.name.encode()[:TEMP_NAME_BYTES].decode(errors="ignore")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes, durable: bool = False) -> Path:
    """An output file: a failure to write it is the caller's OUTPUT_DIR_NOT_WRITABLE, named by
    the file's own name and the system's reason (an OSError's text holds the full path)."""
    try:
        return atomic_write(path, lambda handle: handle.write(data), durable=durable)
    except OSError as exc:
        raise GenserveError(
            ErrorCode.OUTPUT_DIR_NOT_WRITABLE,
            f"output_dir: cannot write {path.name}: {exc.strerror or type(exc).__name__}",
            field="output_dir",
        ) from exc


def write_json(path: Path, payload: Any) -> Path:
    return write_bytes(path, json.dumps(payload, indent=2, default=str).encode())


def save_tensors(path: Path, payload: dict[str, Any]) -> Path:
    """Save a dict of tensors and plain values (str, int, float, lists) for ``load_tensors``."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_bytes(path, buffer.getvalue())


def load_tensors(path: Path, field: str, failure: ErrorCode = ErrorCode.INVALID_INPUT) -> dict[str, Any]:
    """Read a file written by ``save_tensors`` (or a bare tensor), refusing pickled objects."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise GenserveError(
            failure, f"{field}: {path.name} is not a readable tensor file ({type(exc).__name__})", field=field
        ) from exc
    if isinstance(loaded, torch.Tensor):
        return {"tensor": loaded}
    if not isinstance(loaded, dict):
        raise GenserveError(
            failure, f"{field}: {path.name} holds {type(loaded).__name__}, not a dict", field=field
        )
    return loaded


def encode_image(image: Image.Image, fmt: str, quality: int = 95) -> bytes:
    """Encode ``image`` as jpg, png or webp in memory."""
    pil_format = IMAGE_FORMATS[fmt]
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": quality} if pil_format in {"JPEG", "WEBP"} else {}
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()
