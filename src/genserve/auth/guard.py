"""The one check every network door makes: which principal a presented key is, and whether it
holds the scope an operation needs."""

from __future__ import annotations

from genserve.auth.keys import KeyStore
from genserve.auth.principal import ANONYMOUS, Principal, Scope
from genserve.errors import ErrorCode, GenserveError


class Guard:
    """With no keys the server is open (start-up allowed that only on loopback or by
    ``auth.allow_anonymous``) and every caller is the anonymous admin; with keys every call needs one."""

    def __init__(self, store: KeyStore | None) -> None:
        self.store = store

    @property
    def open(self) -> bool:
        return self.store is None or not self.store

    def principal(self, token: str | None) -> Principal:
        if self.open:
            return ANONYMOUS
        assert self.store is not None
        if not token:
            raise GenserveError(
                ErrorCode.UNAUTHENTICATED, "this server needs an API key: send Authorization: Bearer <key>"
            )
        key = self.store.find(token)
        if key is None:
            raise GenserveError(ErrorCode.UNAUTHENTICATED, "the API key is not valid (unknown or revoked)")
        return key.principal()

    @staticmethod
    def require(principal: Principal, scope: Scope, what: str) -> None:
        if not principal.allows(scope):
            held = ", ".join(sorted(s.value for s in principal.scopes)) or "none"
            message = f"{what} needs the {scope.value} scope; key {principal.name!r} holds: {held}"
            raise GenserveError(ErrorCode.PERMISSION_DENIED, message)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
