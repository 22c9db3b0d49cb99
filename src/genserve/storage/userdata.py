"""Per-user files of ComfyUI's web UI: its settings and user data (saved workflows, templates,
``user.css``), one folder per user under ``comfy.user_dir``.

A user never reaches another's folder: a user id is one plain name, and every relative path from
the wire is bounded (``check_path``), resolved and checked with ``commonpath`` against the user's
folder, so ``..``, absolute paths and symlinks leading out are refused alike. Sizes are bounded
per file and per user, and files are written atomically. Refusals name the setting, never a path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from genserve.errors import ErrorCode, GenserveError
from genserve.storage.artifacts import write_bytes
from genserve.storage.paths import check_path, shown

SETTINGS_FILE = "comfy.settings.json"
USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FileInfo = dict[str, Any]


def check_user_id(user: str, field: str = "Comfy-User") -> str:
    if not USER_ID.fullmatch(user):
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"{field}: {shown(user)} is not a user id (1 to 64 letters, digits, _ or -)",
            field=field,
        )
    return user


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([str(path), str(root)]) == str(root)


class UserFiles:
    """The web UI's per-user store: ``max_file_bytes`` a file, ``max_files`` files a user."""

    def __init__(self, root: Path, max_file_bytes: int, max_files: int) -> None:
        self.root = Path(root).resolve()
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files

    def home(self, user: str) -> Path:
        return self.root / check_user_id(user)

    def path(self, user: str, relative: str, field: str = "file") -> Path:
        """``relative`` inside the user's folder, or INVALID_INPUT naming ``field``."""
        check_path(relative, field)
        relative = relative.replace("\\", "/")
        home = self.home(user)
        try:
            path = (home / relative).resolve()
        except (OSError, RuntimeError):
            path = None
        if relative.startswith("/") or path is None or path == home or not _inside(path, home):
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"{field}: {shown(relative)} is not a path inside the user's folder (comfy.user_dir)",
                field=field,
            )
        return path

    def info(self, user: str, path: Path) -> FileInfo:
        stat = path.stat()
        return {
            "path": path.relative_to(self.home(user)).as_posix(),
            "size": stat.st_size,
            "modified": stat.st_mtime,
            "created": stat.st_ctime,
        }

    def listing(self, user: str, directory: str, *, recurse: bool, full_info: bool, split: bool) -> list[Any]:
        """ComfyUI's ``GET /userdata?dir=``: file paths relative to ``directory``; as
        ``[path, *parts]`` with ``split``, as file info with ``full_info``."""
        folder = self.path(user, directory, "dir")
        if not folder.is_dir():
            return []  # not made yet (a new user has no workflows/): nothing in it
        found = sorted(folder.rglob("*") if recurse else folder.iterdir())
        results: list[Any] = []
        for path in found[: self.max_files]:
            if not path.is_file() or path.is_symlink():
                continue
            relative = path.relative_to(folder).as_posix()
            if full_info:
                results.append({**self.info(user, path), "path": relative})
            elif split:
                results.append([relative, *relative.split("/")])
            else:
                results.append(relative)
        return results

    def existing(self, user: str, relative: str, field: str = "file") -> Path:
        path = self.path(user, relative, field)
        if not path.is_file():
            raise GenserveError(
                ErrorCode.NOT_FOUND, f"{field}: {shown(relative)} does not exist", field=field
            )
        return path

    def write(self, user: str, relative: str, data: bytes, *, overwrite: bool = True) -> Path:
        if len(data) > self.max_file_bytes:
            raise GenserveError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the file is {len(data)} bytes; at most {self.max_file_bytes} (comfy.max_userdata_bytes)",
                limit_bytes=self.max_file_bytes,
            )
        path = self.path(user, relative)
        if path.exists():
            if not overwrite:
                raise GenserveError(ErrorCode.ALREADY_EXISTS, f"file: {shown(relative)} already exists")
            if not path.is_file():
                raise GenserveError(
                    ErrorCode.INVALID_INPUT, f"file: {shown(relative)} is a folder", field="file"
                )
        else:
            self._check_room(user)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, data, durable=True)
        return path

    def delete(self, user: str, relative: str) -> None:
        self.existing(user, relative).unlink()

    def move(self, user: str, source: str, dest: str, *, overwrite: bool = True) -> Path:
        origin = self.existing(user, source)
        target = self.path(user, dest, "dest")
        if target.exists() and (not overwrite or not target.is_file()):
            raise GenserveError(ErrorCode.ALREADY_EXISTS, f"dest: {shown(dest)} already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(origin, target)
        return target

    def settings(self, user: str) -> dict[str, Any]:
        """The user's settings; a missing or unreadable file reads as none (as ComfyUI does)."""
        path = self.home(user) / SETTINGS_FILE
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def save_settings(self, user: str, values: dict[str, Any]) -> None:
        self.write(user, SETTINGS_FILE, json.dumps(values, indent=2).encode())

    def _check_room(self, user: str) -> None:
        home = self.home(user)
        count = sum(len(files) for _, _, files in os.walk(home)) if home.is_dir() else 0
        if count >= self.max_files:
            raise GenserveError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the user already keeps {count} files; at most {self.max_files} (comfy.max_userdata_files)",
            )
