"""Resolve user-supplied paths inside configured roots, and nowhere else.

Every path that arrives from the wire (image paths, output folders, latent and encoding files)
goes through a Sandbox. A path is resolved (symlinks followed) and then checked with
``os.path.commonpath`` against each root, so ``..``, absolute paths elsewhere and symlinks that
lead out are all refused the same way.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from genserve.errors import ErrorCode, GenserveError

PROBE_TTL_S = 10.0  # a folder that took a write recently is not probed again
PROBE_CACHE_ENTRIES = 1024
# 255 bytes less "_", a request id tag of up to 64 characters, "." and the longest extension
MAX_OUTPUT_NAME_BYTES = 185


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([str(path), str(root)]) == str(root)


class Sandbox:
    """Read roots and write roots; write roots are readable too (outputs feed the next service)."""

    def __init__(
        self, read_roots: Sequence[Path], write_roots: Sequence[Path], default_output_dir: Path
    ) -> None:
        self.write_roots = [Path(r).resolve() for r in write_roots]
        self.read_roots = [Path(r).resolve() for r in read_roots] + self.write_roots
        self.default_output_dir = Path(default_output_dir).resolve()
        self._writable: dict[Path, float] = {}  # folder -> when a write probe last succeeded

    def _resolve(self, raw: str | os.PathLike[str], field: str, roots: Sequence[Path]) -> Path:
        text = os.fspath(raw)
        if not text or "\x00" in text:
            raise GenserveError(ErrorCode.INVALID_INPUT, f"{field}: a path is required", field=field)
        candidate = Path(text)
        # A relative path is tried inside each root in turn: the first root where it exists
        # decides, and it must stay inside a root once resolved (symlinks included).
        lexical = [candidate] if candidate.is_absolute() else [root / candidate for root in roots]
        fallback = None
        for path in lexical:
            resolved = path.resolve()
            inside = any(_inside(resolved, root) for root in roots)
            if os.path.lexists(path):
                if inside:
                    return resolved
                break
            if inside and fallback is None:
                fallback = resolved
        else:
            if fallback is not None:
                return fallback
        raise GenserveError(
            ErrorCode.PERMISSION_DENIED,
            f"{field}: path {text!r} is outside the allowed roots",
            field=field,
            roots=[str(r) for r in roots],
        )

    def readable_file(self, raw: str | os.PathLike[str], field: str, missing: ErrorCode) -> Path:
        """A file inside a read root that exists; ``missing`` is the code when it does not."""
        path = self._resolve(raw, field, self.read_roots)
        if not path.is_file():
            raise GenserveError(missing, f"{field}: file not found: {os.fspath(raw)}", field=field)
        return path

    def output_dir(self, raw: str | os.PathLike[str] | None, field: str = "output_dir") -> Path:
        """An existing or creatable folder inside a write root, checked for writing now."""
        if raw is None or os.fspath(raw) == "":
            path = self.default_output_dir
            if not any(_inside(path, root) for root in self.write_roots):
                raise GenserveError(
                    ErrorCode.OUTPUT_DIR_NOT_WRITABLE,
                    f"{field}: default output folder {path} is outside the write roots",
                    field=field,
                )
        else:
            try:
                path = self._resolve(raw, field, self.write_roots)
            except GenserveError as exc:
                raise GenserveError(
                    ErrorCode.OUTPUT_DIR_NOT_WRITABLE,
                    f"{field}: cannot write to {os.fspath(raw)!r}: outside the allowed output roots",
                    field=field,
                    roots=[str(r) for r in self.write_roots],
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
                f"{field}: cannot write to {os.fspath(raw or path)!r}: {exc.strerror or exc}",
                field=field,
            ) from exc
        return path

    def output_name(self, name: str, field: str) -> str:
        """A bare file name for an output: no separators, no parent references, and short enough
        that the request id and extension appended to it still fit a file system's 255 bytes."""
        if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, f"{field}: {name!r} must be a plain file name", field=field
            )
        if len(name.encode()) > MAX_OUTPUT_NAME_BYTES:
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"{field}: {len(name.encode())} bytes in UTF-8; at most {MAX_OUTPUT_NAME_BYTES}, so that "
                "the request id and extension added to it fit a 255-byte file name",
                field=field,
            )
        return name
