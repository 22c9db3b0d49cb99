"""Model files arriving over the wire: name checks, a size limit, and an atomic landing.

A name is ``<kind>/<file>`` (``vae/my_vae.safetensors``): the kind picks the sub-folder, the file
name is one plain path component. Bytes go to a hidden temporary file beside the target
(``.upload-<uuid hex>.part``) and are renamed into place only when the whole stream has arrived,
so a broken upload leaves nothing behind and a reader never sees half a file. Existing files are
not overwritten.

A server killed mid-upload cannot remove its temporary file, so ``remove_stale_uploads`` does at
the next start. An upload holds an exclusive ``flock`` on its temporary file from creation to
rename, and the kernel drops it when the process dies: a file whose lock can be taken is stale,
one whose lock cannot is a live upload of another process sharing the models folder, and stays.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO

from genserve.errors import ErrorCode, GenserveError
from genserve.models.registry import ModelKind, ModelRegistry

log = logging.getLogger("genserve.models")

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
_TEMP_NAME = re.compile(r"\.upload-[0-9a-f]{32}\.part")


def model_file_target(registry: ModelRegistry, raw: str, field: str = "filename") -> tuple[ModelKind, Path]:
    """Where ``<kind>/<file>`` lives in the models folder; refuses anything that could leave it."""
    kind_text, sep, name = raw.partition("/")
    kinds = ", ".join(k.value for k in ModelKind)
    if not sep or "/" in name or "\\" in raw:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: {raw!r} must be <kind>/<file name>, kind one of {kinds}",
            field=field,
        )
    try:
        kind = ModelKind(kind_text)
    except ValueError:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"{field}: unknown model kind {kind_text!r}; kinds: {kinds}", field=field
        ) from None
    if not _FILE_NAME.fullmatch(name) or ".." in name:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: {name!r} is not a plain file name (letters, digits and ._+-, not starting with '.')",
            field=field,
        )
    return kind, registry.folder(kind) / name


class ModelUpload:
    """One upload in progress: ``write`` chunks, then ``commit`` or ``abort``."""

    def __init__(self, registry: ModelRegistry, raw_name: str, max_bytes: int) -> None:
        self.kind, self.target = model_file_target(registry, raw_name)
        self.name = raw_name
        self._registry = registry
        self._refuse_if_taken()
        self.max_bytes = max_bytes
        self.size = 0
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._temp, self._file = _locked_temp(self.target)

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "upload already finished"
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.abort()
            raise GenserveError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"data: upload of {self.name} is larger than {self.max_bytes} bytes (grpc.upload_max_mb)",
                field="data",
            )
        self._file.write(chunk)

    def commit(self) -> Path:
        """Renamed into place while still locked, so no start-up sweep can take it meanwhile."""
        assert self._file is not None, "upload already finished"
        self._file.flush()
        os.fsync(self._file.fileno())
        try:
            self._refuse_if_taken()  # someone else finished the same name first
            os.replace(self._temp, self.target)
        except BaseException:
            self.abort()
            raise
        self._file.close()
        self._file = None
        return self.target

    def _refuse_if_taken(self) -> None:
        """A name the server already answers to is taken, whether by a file of that name or by
        the model folder it stands for: a new file would silently replace what loads today."""
        found = self._registry.find(self.kind, self.target.name)
        if found is None:
            return
        held = "" if found == self.target else f" (as the folder {self.kind.value}/{found.name}/)"
        raise GenserveError(
            ErrorCode.ALREADY_EXISTS,
            f"filename: {self.name} already exists in the models folder{held}; remove it first to replace it",
            field="filename",
        )

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._temp.unlink(missing_ok=True)


def _locked_temp(target: Path) -> tuple[Path, BinaryIO]:
    """A new temporary file beside ``target``, created and locked. A sweep in another process may
    take a file between its creation and its lock; then it is made again under a new name."""
    for _ in range(3):
        temp = target.with_name(f".upload-{uuid.uuid4().hex}.part")
        file = temp.open("xb")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(temp).st_ino == os.fstat(file.fileno()).st_ino:
                return temp, file
        except (BlockingIOError, FileNotFoundError):
            pass
        file.close()
    raise GenserveError(ErrorCode.UNAVAILABLE, "could not start the upload; try again")


def remove_stale_uploads(registry: ModelRegistry) -> list[str]:
    """Delete the temporary files of uploads cut off by a stopped server, in each kind's folder:
    only regular files named as ``ModelUpload`` names them, only when no process holds their lock.
    Returns their names as ``<kind>/<file>``; each is logged."""
    removed = []
    for kind in ModelKind:
        try:
            with os.scandir(registry.folder(kind)) as found:
                entries = list(found)
        except OSError:  # no such folder, or not a folder
            continue
        for entry in entries:
            if not _TEMP_NAME.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            size = _remove_if_unlocked(entry.path)
            if size is not None:
                removed.append(f"{kind.value}/{entry.name}")
                log.warning(
                    "removed %s/%s (%d bytes): an upload cut off by a stop", kind.value, entry.name, size
                )
    return removed


def _remove_if_unlocked(path: str) -> int | None:
    """The file's size once removed; None when it is locked (a live upload) or already gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        size = os.fstat(fd).st_size
        os.unlink(path)
        return size
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)


def file_status(registry: ModelRegistry, raw: str) -> tuple[bool, str | None]:
    """Whether a model file exists: ``<kind>/<file>``, or a bare file name looked up in every kind.

    Returns (exists, error); a name that is not a plain model file name gets an error, not an
    exception, so one bad name does not spoil the answer for the others.
    """
    if "/" in raw:
        try:
            kind, target = model_file_target(registry, raw, "files")
        except GenserveError as exc:
            return False, f"{raw}: {exc.message}"
        return registry.find(kind, target.name) is not None, None
    if not _FILE_NAME.fullmatch(raw) or ".." in raw:
        return False, f"{raw}: not a plain file name; it must stay inside the models folder"
    return any(registry.find(kind, raw) is not None for kind in ModelKind), None
