"""The scopes a key may hold and the principal a request runs as."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    """``infer`` runs work and sees its own; ``admin`` also changes the server (models, queues)
    and sees every client's work."""

    INFER = "infer"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """``key_id`` is None for the anonymous caller of an open server (loopback with no keys)."""

    key_id: str | None
    name: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    @property
    def admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    @property
    def owner(self) -> str | None:
        """What a client's work is filed under: its key, or None on an open server (no owners)."""
        return self.key_id


ANONYMOUS = Principal(None, "anonymous", frozenset(Scope))
