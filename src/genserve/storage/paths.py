"""Resolve user-supplied paths inside configured roots, and nowhere else.

Every path that arrives from the wire (image paths, output folders, latent and encoding files)
goes through a Sandbox. Its text is bounded first (length, depth, each component's bytes, NUL,
text the file system cannot encode), so nothing malformed reaches a file call, whose errors name
the absolute path. It is then resolved (symlinks followed) and checked with
``os.path.commonpath`` against each root, so ``..``, absolute paths elsewhere and symlinks that
lead out are all refused the same way. Answers name the roots by their setting, never their path.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from genserve.config.storage import DEFAULT_MAX_IMAGE_PIXELS
from genserve.errors import ErrorCode, GenserveError

PROBE_TTL_S = 10.0  # a folder that took a write recently is not probed again
PROBE_CACHE_ENTRIES = 1024
# 255 bytes less "_", a request id tag of up to 64 characters, "." and the longest extension
MAX_OUTPUT_NAME_BYTES = 185
MAX_NAME_BYTES = 255  # one path component: every common file system's limit
MAX_PATH_BYTES = 2048  # a path as sent, so that a root joined to it stays well under PATH_MAX (4096)
MAX_PATH_DEPTH = 64  # components; also bounds the recursion of creating missing parents
SHOWN_CHARS = 160  # how much of a refused value an answer quotes back
READ_SETTINGS = ["storage.read_roots", "storage.write_roots"]
WRITE_SETTINGS = ["storage.write_roots"]


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([str(path), str(root)]) == str(root)


def shown(value: str | os.PathLike[str]) -> str:
    """A client's value as an answer quotes it: repr'd, its middle cut out when long (the end of
    a path, its file name, says the most)."""
    text = os.fspath(value)
    if len(text) > SHOWN_CHARS:
        head = SHOWN_CHARS // 4
        text = f"{text[:head]}...{text[head - SHOWN_CHARS :]}"
    return repr(text)


def _refuse(field: str, message: str) -> GenserveError:
    return GenserveError(ErrorCode.INVALID_INPUT, f"{field}: {message}", field=field)


def _utf8(text: str, field: str, what: str) -> bytes:
    if "\x00" in text:
        raise _refuse(field, f"the {what} contains a NUL character")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(field, f"the {what} is not valid Unicode (it holds a lone surrogate)") from None


def check_name(name: str, field: str, limit: int = MAX_NAME_BYTES) -> str:
    """A single file or folder name a file system can hold: not empty, no NUL, at most ``limit``
    bytes in UTF-8. Separators and ``..`` are the caller's rule; this only bounds the text."""
    if not name:
        raise _refuse(field, "a name is required")
    size = len(_utf8(name, field, "name"))
    if size > limit:
        raise _refuse(field, f"the name is {size} bytes in UTF-8; at most {limit}")
    return name


def check_path(text: str, field: str) -> str:
    """Refuse a path no file call should see: empty, NUL, unencodable, longer than
    ``MAX_PATH_BYTES``, deeper than ``MAX_PATH_DEPTH`` or with a component over 255 bytes."""
    if not text:
        raise _refuse(field, "a path is required")
    size = len(_utf8(text, field, "path"))
    if size > MAX_PATH_BYTES:
        raise _refuse(field, f"the path is {size} bytes in UTF-8; at most {MAX_PATH_BYTES}")
    parts = [part for part in text.replace("\\", "/").split("/") if part]
    if len(parts) > MAX_PATH_DEPTH:
        raise _refuse(field, f"the path has {len(parts)} components; at most {MAX_PATH_DEPTH}")
    longest = max((len(part.encode()) for part in parts), default=0)
    if longest > MAX_NAME_BYTES:
        raise _refuse(field, f"a path component is {longest} bytes in UTF-8; at most {MAX_NAME_BYTES}")
    return text


def _resolved(path: Path) -> Path | None:
    """``path`` with symlinks followed; None when it cannot be (a symlink loop, a name too long)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


class Sandbox:
    """Read roots and write roots; write roots are readable too (outputs feed the next service).

    ``max_image_pixels`` bounds every image a request names (``storage.max_image_pixels``); the
    readers in ``storage.images`` apply it.
    """

    def __init__(
        self,
        read_roots: Sequence[Path],
        write_roots: Sequence[Path],
        default_output_dir: Path,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.write_roots = [Path(r).resolve() for r in write_roots]
        self.read_roots = [Path(r).resolve() for r in read_roots] + self.write_roots
        self.default_output_dir = Path(default_output_dir).resolve()
        self.max_image_pixels = max_image_pixels
        self._writable: dict[Path, float] = {}  # folder -> when a write probe last succeeded

    def _resolve(self, text: str, field: str, roots: Sequence[Path], settings: list[str], label: str) -> Path:
        """The resolved path inside one of ``roots``; refusals call it ``label`` and name the
        roots by their ``settings``."""
        check_path(text, field)
        candidate = Path(text)
        # A relative path is tried inside each root in turn: the first root where it exists
        # decides, and it must stay inside a root once resolved (symlinks included).
        lexical = [candidate] if candidate.is_absolute() else [root / candidate for root in roots]
        fallback = None
        for path in lexical:
            resolved = _resolved(path)
            if resolved is not None and not any(_inside(resolved, root) for root in roots):
                resolved = None  # it leads out of every root
            if os.path.lexists(path):
                if resolved is not None:
                    return resolved
                break
            if resolved is not None and fallback is None:
                fallback = resolved
        else:
            if fallback is not None:
                return fallback
        raise GenserveError(
            ErrorCode.PERMISSION_DENIED,
            f"{field}: path {label} is outside {' and '.join(settings)}",
            field=field,
            roots=settings,
        )

    def readable_file(
        self, raw: str | os.PathLike[str], field: str, missing: ErrorCode, name: str | None = None
    ) -> Path:
        """A file inside a read root that exists; ``missing`` is the code when it does not.

        ``name`` is how answers call the file when ``raw`` is a path the server built (LoadImage
        joins the input folder to the client's name); by default ``raw`` itself, as the client sent it.
        """
        text = os.fspath(raw)
        label = shown(text if name is None else name)
        path = self._resolve(text, field, self.read_roots, READ_SETTINGS, label)
        try:
            found = path.is_file()
        except OSError:
            found = False
        if not found:
            raise GenserveError(missing, f"{field}: file not found: {label}", field=field)
        return path

    def output_dir(
        self, raw: str | os.PathLike[str] | None, field: str = "output_dir", name: str | None = None
    ) -> Path:
        """An existing or creatable folder inside a write root, checked for writing now; ``name``
        is how answers call it when the server built ``raw`` (as in ``readable_file``)."""
        if raw is None or os.fspath(raw) == "":
            path, label = self.default_output_dir, "storage.default_output_dir"
            if not any(_inside(path, root) for root in self.write_roots):
                raise GenserveError(
                    ErrorCode.OUTPUT_DIR_NOT_WRITABLE,
                    f"{field}: {label} is outside storage.write_roots",
                    field=field,
                )
        else:
            label = shown(raw if name is None else name)
            try:
                path = self._resolve(os.fspath(raw), field, self.write_roots, WRITE_SETTINGS, label)
            except GenserveError as exc:
                if exc.code is ErrorCode.INVALID_INPUT:  # malformed, not misplaced
                    raise
                raise GenserveError(
                    ErrorCode.OUTPUT_DIR_NOT_WRITABLE,
                    f"{field}: cannot write to {label}: outside storage.write_roots",
                    field=field,
                    roots=WRITE_SETTINGS,
                ) from exc
        if time.monotonic() - self._writable.get(path, -PROBE_TTL_S) < PROBE_TTL_S and path.is_dir():
            return path
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
                pass
            if len(self._writable) >= PROBE_CACHE_ENTRIES:  # many distinct folders: start over, stay bounded
                self._writable.clear()
            self._writable[path] = time.monotonic()
        except OSError as exc:
            raise GenserveError(
                ErrorCode.OUTPUT_DIR_NOT_WRITABLE,
                f"{field}: cannot write to {label}: {exc.strerror or type(exc).__name__}",
                field=field,
            ) from exc
        return path

    def output_name(self, name: str, field: str) -> str:
        """A bare file name for an output: no separators, no parent references, and short enough
        that the request id and extension appended to it still fit a file system's 255 bytes."""
        if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"{field}: {shown(name)} must be a plain file name", field=field
            )
        size = len(check_name(name, field).encode())
        if size > MAX_OUTPUT_NAME_BYTES:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"{field}: {size} bytes in UTF-8; at most {MAX_OUTPUT_NAME_BYTES}, so that "
                "the request id and extension added to it fit a 255-byte file name",
                field=field,
            )
        return name
