"""ComfyUI's file routes: ``/view`` reads a file, ``/upload/image`` stores an image for LoadImage,
``/upload/mask`` stores an image whose alpha is the uploaded mask's (ComfyUI's mask editor).

Both are confined to the workflows input and output folders (no ``..``, no absolute paths) and
answer as ComfyUI does, with bare status codes and plain-text reasons. The bridge's uploads
(``bridge-uploads/`` in the input folder) belong to its clients: ``/upload/image`` never replaces
a different file there, whatever ``overwrite`` says. With API keys, a key without the admin scope
uploads into ``clients/<key id>/`` (the answer's ``subfolder`` says so, and LoadImage takes the
path) and cannot view files in another key's folder there (owners.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import mimetypes
import os
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL.PngImagePlugin import PngInfo
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from genserve.api.rest.auth import PrincipalDep
from genserve.api.rest.dependencies import ComfyFiles, ComfyFilesDep, rest_parts
from genserve.auth.principal import Principal
from genserve.errors import GenserveError
from genserve.storage.artifacts import write_bytes
from genserve.storage.images import reading_image
from genserve.storage.paths import check_name, check_path
from genserve.workflows.nodes.image import BRIDGE_UPLOADS
from genserve.workflows.owners import confinement, own_folder, reachable

router = APIRouter(tags=["comfyui"])

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ ()+-]")
# Room left in 255 bytes for the " (N)" a name gains when it is taken.
MAX_UPLOAD_NAME_BYTES = 200

# Form fields by name -> (file name or None, content).
FormFields = dict[str, tuple[str | None, bytes]]


class _Refused(Exception):
    """An upload ComfyUI would refuse, with its plain-text reason and status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([str(path), str(root)]) == str(root)


def _folder(base: Path, subfolder: str) -> Path | None:
    """``base/subfolder`` when it stays inside ``base`` (no ``..``, no absolute paths), else None."""
    if subfolder and (os.path.isabs(subfolder) or "\x00" in subfolder):
        return None
    path = _resolved(base / subfolder)
    return path if path is not None and _inside(path, base.resolve()) else None


def safe_upload_name(raw: str) -> str | None:
    """The last path component, with anything but plain characters replaced: ``../x.png`` -> ``x.png``."""
    name = _SAFE_NAME.sub("_", raw.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return None if name in {"", ".", ".."} or name.startswith(".") else name


@router.get("/view")
async def view(
    files: ComfyFilesDep, caller: PrincipalDep, filename: str = "", type: str = "output", subfolder: str = ""
) -> Response:
    base = files.folders.get(type)
    name = filename.replace("\\", "/")
    if base is None or not name or "/" in name or name in {".", ".."} or not _storable(subfolder, name):
        return Response(status_code=400)
    if not reachable(f"{subfolder.strip('/')}/{name}", confinement(caller)):
        return Response(status_code=404)  # another key's file: as if it were not there
    folder = _folder(base, subfolder)
    path = _resolved(folder / name) if folder is not None else None
    if path is None or not _inside(path, base.resolve()):
        return Response(status_code=403)
    if not _is_file(path):
        return Response(status_code=404)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    # Starlette writes the name as RFC 5987 (filename*=utf-8''...) when it is not plain ASCII,
    # so any name SaveImage produced is served, and none can break or add a header.
    return FileResponse(path, media_type=media, filename=path.name, content_disposition_type="inline")


def _storable(subfolder: str, name: str | None = None) -> bool:
    """Whether a file system could hold the subfolder and name at all (length, depth, NUL,
    encodable): checked before any file call, whose errors would be a 500."""
    try:
        if name is not None:
            check_name(name, "filename")
        if subfolder:
            check_path(subfolder, "subfolder")
    except GenserveError:
        return False
    return True


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a symlinked path past PATH_MAX, say: nothing to serve either way
        return False


@router.post("/upload/image")
async def upload_image(request: Request, files: ComfyFilesDep, caller: PrincipalDep) -> Response:
    input_dir = files.folders["input"]
    max_pixels = rest_parts(request).runtime.sandbox.max_image_pixels
    try:
        fields = await _read_form(request, files.max_upload_bytes)
        name, data = await asyncio.to_thread(_image_part, fields, max_pixels)
        folder, subfolder = _destination(fields, input_dir, confinement(caller))
    except _Refused as refused:
        return Response(refused.message, status_code=refused.status)
    overwrite = _text(fields, "overwrite").lower() in {"true", "1"}
    protected = _inside(folder, (input_dir / BRIDGE_UPLOADS).resolve())
    stored = await asyncio.to_thread(_store, folder, name, data, overwrite, protected)
    return JSONResponse({"name": stored, "subfolder": subfolder, "type": "input"})


@router.post("/upload/mask")
async def upload_mask(request: Request, files: ComfyFilesDep, caller: PrincipalDep) -> Response:
    """As ``/upload/image``, but what is stored is ``original_ref``'s image (an input or output
    file) with the uploaded image's alpha channel as its own, its PNG text kept."""
    input_dir = files.folders["input"]
    max_pixels = rest_parts(request).runtime.sandbox.max_image_pixels
    try:
        fields = await _read_form(request, files.max_upload_bytes)
        name, mask = await asyncio.to_thread(_image_part, fields, max_pixels)
        folder, subfolder = _destination(fields, input_dir, confinement(caller))
        original = _original(fields, files, caller)
        data = await asyncio.to_thread(_masked, original, mask, max_pixels)
    except _Refused as refused:
        return Response(refused.message, status_code=refused.status)
    overwrite = _text(fields, "overwrite").lower() in {"true", "1"}
    protected = _inside(folder, (input_dir / BRIDGE_UPLOADS).resolve())
    stored = await asyncio.to_thread(_store, folder, name, data, overwrite, protected)
    return JSONResponse({"name": stored, "subfolder": subfolder, "type": "input"})


def _original(fields: FormFields, files: ComfyFiles, caller: Principal) -> Path:
    """The file ``original_ref`` names (``{filename, subfolder, type}``, the name possibly
    annotated ``x.png [output]``), checked as ``/view`` checks it."""
    try:
        ref = json.loads(_text(fields, "original_ref"))
    except ValueError:
        raise _Refused("original_ref: not JSON") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise _Refused("original_ref: needs a filename")
    name, kind = ref["filename"], str(ref.get("type") or "output")
    for annotation in ("input", "output", "temp"):
        if name.endswith(f" [{annotation}]"):
            name, kind = name.removesuffix(f" [{annotation}]"), annotation
    subfolder = str(ref.get("subfolder") or "")
    base = files.folders.get(kind)
    if base is None or not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise _Refused("original_ref: invalid filename or type")
    if not _storable(subfolder, name) or not reachable(f"{subfolder.strip('/')}/{name}", confinement(caller)):
        raise _Refused("original_ref: not found", 404)
    folder = _folder(base, subfolder)
    path = _resolved(folder / name) if folder is not None else None
    if path is None or not _inside(path, base.resolve()):
        raise _Refused("original_ref: outside its folder", 403)
    if not _is_file(path):
        raise _Refused("original_ref: not found", 404)
    return path


def _masked(original: Path, mask: bytes, max_pixels: int) -> bytes:
    """The original as RGBA PNG with the mask's alpha, the original's PNG text chunks kept."""
    try:
        with reading_image(original, "original_ref", original.name, max_pixels) as image:
            info = PngInfo()
            for key, value in (getattr(image, "text", None) or {}).items():
                info.add_text(key, value)
            rgba = image.convert("RGBA")
        with reading_image(mask, "image", "mask", max_pixels) as mask_image:
            alpha = mask_image.convert("RGBA").getchannel("A")
    except GenserveError as exc:
        raise _Refused(exc.message) from None
    if alpha.size != rgba.size:
        raise _Refused(
            f"image: the mask is {alpha.size[0]}x{alpha.size[1]}, the original {rgba.size[0]}x{rgba.size[1]}"
        )
    rgba.putalpha(alpha)
    out = io.BytesIO()
    rgba.save(out, format="PNG", compress_level=4, pnginfo=info)
    return out.getvalue()


async def _read_form(request: Request, max_upload_bytes: int) -> FormFields:
    """The multipart body's fields, once the body is known to be multipart and small enough."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise _Refused("expected multipart/form-data")
    body = await request.body()
    if len(body) > max_upload_bytes:
        raise _Refused(f"upload larger than {max_upload_bytes} bytes", 413)
    try:  # the form parser reads the body cached above, not the stream again
        return await _form_fields(request, max_upload_bytes)
    except (MultiPartException, HTTPException) as exc:
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise _Refused(f"cannot read the multipart body: {detail}") from None


async def _form_fields(request: Request, max_part_size: int) -> FormFields:
    """Form fields by name; a repeated name keeps its last part.

    Raises MultiPartException or Starlette's HTTPException (its wrapper inside an app) for a body
    that is not valid multipart.
    """
    fields: FormFields = {}
    async with request.form(max_part_size=max_part_size) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                fields[name] = (value.filename, await value.read())
            else:
                fields[name] = (None, value.encode())
    return fields


def _text(fields: FormFields, key: str, default: bytes = b"") -> str:
    return fields.get(key, (None, default))[1].decode(errors="replace")


def _image_part(fields: FormFields, max_pixels: int) -> tuple[str, bytes]:
    """The ``image`` file part's safe name and bytes, once they are known to be an image of at
    most ``max_pixels`` (read from its header: the pixels are never decoded here)."""
    if "image" not in fields or fields["image"][0] is None:
        raise _Refused("no image part")
    raw_name, data = fields["image"]
    name = safe_upload_name(raw_name or "")
    if name is None or len(name.encode()) > MAX_UPLOAD_NAME_BYTES:
        raise _Refused("invalid file name")
    try:
        with reading_image(data, "image", name, max_pixels) as image:
            image.verify()
    except GenserveError as exc:
        raise _Refused(exc.message) from None
    return name, data


def _destination(fields: FormFields, input_dir: Path, confined: str | None) -> tuple[Path, str]:
    """The folder to store into and the ``subfolder`` as the answer names it: inside the key's own
    folder for a ``confined`` key."""
    # Uploads land in the input folder only; outputs are the runner's.
    if (_text(fields, "type", b"input") or "input") != "input":
        raise _Refused("type must be input")
    subfolder = _text(fields, "subfolder").strip().strip("/")
    if confined is not None and not (subfolder + "/").startswith(own_folder(confined) + "/"):
        subfolder = "/".join(part for part in (own_folder(confined), subfolder) if part)
    folder = _folder(input_dir, subfolder) if _storable(subfolder) else None
    if folder is None:
        raise _Refused("invalid subfolder")
    return folder, subfolder


def _store(folder: Path, name: str, data: bytes, overwrite: bool, protected: bool = False) -> str:
    """Write the upload; without ``overwrite`` an existing name becomes ``stem (1).ext`` (ComfyUI).

    In a ``protected`` folder (the bridge's uploads) ``overwrite`` only accepts the same bytes again
    (a bridge re-sending a job's input to this backend); different bytes get a fresh name, as
    without ``overwrite``, so no client can replace a file another client's job reads.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if protected and overwrite and path.exists():
        with contextlib.suppress(OSError):
            if path.is_file() and path.read_bytes() == data:
                return path.name
        overwrite = False
    if not overwrite:
        stem, suffix = os.path.splitext(name)
        counter = 1
        while path.exists():
            path = folder / f"{stem} ({counter}){suffix}"
            counter += 1
    write_bytes(path, data, durable=True)
    return path.name
