"""API keys on disk: each key's id, name, scopes and the SHA-256 of its secret, never the secret.

A key reads ``gsk_<id>_<secret>``: the id finds the record without a scan, and the 256-bit random
secret makes a fast hash safe (no password-style stretching is needed when nothing is guessable).
The file is rewritten atomically with mode 0600 and re-read when it changes, so a key added or
revoked with ``genserve keys`` takes effect on a running server at its next request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genserve.auth.principal import Principal, Scope
from genserve.errors import ErrorCode, GenserveError

PREFIX = "gsk_"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[Scope]
    created: float
    digest: str  # hex SHA-256 of the secret

    def principal(self) -> Principal:
        return Principal(self.id, self.name, self.scopes)

    def to_json(self) -> dict[str, Any]:
        scopes = sorted(s.value for s in self.scopes)
        return {
            "id": self.id,
            "name": self.name,
            "scopes": scopes,
            "created": self.created,
            "sha256": self.digest,
        }


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._keys: dict[str, ApiKey] = {}

    def all(self) -> list[ApiKey]:
        with self._lock:
            self._refresh()
            return sorted(self._keys.values(), key=lambda k: k.created)

    def __bool__(self) -> bool:
        return bool(self.all())

    def add(self, name: str, scopes: set[Scope]) -> tuple[ApiKey, str]:
        """A new key and its token, which is shown this once and never stored."""
        name = name.strip()
        if not name or len(name) > 64 or not name.isprintable():
            raise GenserveError(ErrorCode.INVALID_INPUT, "name: 1 to 64 printable characters", field="name")
        if not scopes:
            raise GenserveError(
                ErrorCode.INVALID_INPUT, "scope: give at least one (infer, admin)", field="scope"
            )
        with self._lock:
            self._refresh()
            if any(k.name == name for k in self._keys.values()):
                raise GenserveError(
                    ErrorCode.ALREADY_EXISTS, f"name: a key named {name!r} exists", field="name"
                )
            key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
            while key_id in self._keys:
                key_id = secrets.token_hex(4)
            key = ApiKey(key_id, name, frozenset(scopes), time.time(), _digest(secret))
            self._write({**self._keys, key_id: key})
            return key, f"{PREFIX}{key_id}_{secret}"

    def revoke(self, id_or_name: str) -> ApiKey:
        with self._lock:
            self._refresh()
            found = [k for k in self._keys.values() if id_or_name in (k.id, k.name)]
            if not found:
                raise GenserveError(
                    ErrorCode.NOT_FOUND, f"no key with id or name {id_or_name!r}", field="key"
                )
            self._write({k: v for k, v in self._keys.items() if v is not found[0]})
            return found[0]

    def find(self, token: str) -> ApiKey | None:
        """The key a token belongs to; None for a malformed, unknown or revoked one."""
        if not token.startswith(PREFIX) or len(token) > 200:
            return None
        key_id, _, secret = token[len(PREFIX) :].partition("_")
        with self._lock:
            self._refresh()
            key = self._keys.get(key_id)
        if key is None or not secret:
            return None
        return key if hmac.compare_digest(key.digest, _digest(secret)) else None

    def _refresh(self) -> None:
        """Re-read the file when it changed (lock held); a missing file is no keys."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._keys = None, {}
            return
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen == self._seen:
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            keys = {k["id"]: _parse(k) for k in raw["keys"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A server must not fall open on a damaged file: keep refusing until it is fixed.
            raise GenserveError(
                ErrorCode.INTERNAL, f"auth.keys_file cannot be read ({type(exc).__name__}); fix or remove it"
            ) from exc
        self._seen, self._keys = seen, keys

    def _write(self, keys: dict[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"version": FORMAT_VERSION, "keys": [k.to_json() for k in keys.values()]}
        fd, temp = tempfile.mkstemp(prefix=".keys-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(body, out, indent=2)
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        self._seen, self._keys = None, {}
        self._refresh()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _parse(raw: dict[str, Any]) -> ApiKey:
    scopes = frozenset(Scope(s) for s in raw["scopes"])
    return ApiKey(str(raw["id"]), str(raw["name"]), scopes, float(raw["created"]), str(raw["sha256"]))
