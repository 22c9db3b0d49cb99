"""Whose prompts, client ids and files are whose, when the server has API keys.

Every prompt records the key that submitted it; a caller sees its own, an admin sees all, and on
a server without keys (everyone is the anonymous admin) nothing changes. A ComfyUI ``client_id``
belongs to the first key that used it, so nobody can listen to another key's socket messages or
file prompts under its name. A key that is not admin is also *confined*: its uploads and outputs
live under ``clients/<key id>/`` in the input and output folders, and it cannot read another
confined key's files there.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from genserve.auth.principal import Principal
from genserve.errors import ErrorCode, GenserveError

CLIENTS = "clients"  # the folder confined keys' files live under, in the input and output folders


def sees(viewer: Principal | None, owner: str | None) -> bool:
    """``viewer`` None: the server itself (the bridge, tests), which sees everything."""
    return viewer is None or viewer.admin or viewer.owner == owner


def confinement(principal: Principal | None) -> str | None:
    """The key id whose folder a caller is kept to: keyed callers without the admin scope."""
    if principal is None or principal.admin or principal.owner is None:
        return None
    return principal.owner


def own_folder(confined: str) -> str:
    return f"{CLIENTS}/{confined}"


def reachable(relative: str, confined: str | None) -> bool:
    """Whether a path inside the input or output folder is one ``confined`` may read: anything
    outside ``clients/``, and its own folder inside it."""
    if confined is None:
        return True
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    return not parts or parts[0] != CLIENTS or (len(parts) > 1 and parts[1] == confined)


class ClientClaims:
    """ComfyUI client ids, each held by the key that first used one (in memory, as the queue is)."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def claim(self, client_id: str | None, principal: Principal | None) -> None:
        if client_id is None or principal is None or principal.owner is None:
            return
        with self._lock:
            holder = self._owners.setdefault(client_id, principal.owner)
        if holder != principal.owner and not principal.admin:
            raise GenserveError(
                ErrorCode.PERMISSION_DENIED,
                f"client_id: {client_id[:64]!r} belongs to another API key",
                field="client_id",
            )

    def owner(self, client_id: str | None) -> str | None:
        with self._lock:
            return None if client_id is None else self._owners.get(client_id)


def check_reachable(prompt: Mapping[str, Any], confined: str | None) -> None:
    """Before the output cache could hand it over: no input of a confined key's prompt names a
    file in another key's folder (answered as a missing file, so its existence stays unknown)."""
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        for name, value in inputs.items() if isinstance(inputs, dict) else ():
            if isinstance(value, str) and not reachable(value, confined):
                raise GenserveError(
                    ErrorCode.IMAGE_NOT_FOUND, f"{name}: file not found: {value[:160]!r}", field=name
                )
