"""Session tokens: the coordinator signs one RS256 JWT per routed job; the chosen agent checks it.

What must hold:
- a restart keeps the key, so agents and issued tokens survive it: ``load_or_create_key`` keeps
  it in a 0600 file and reuses it;
- an agent without the key accepts no token: ``TokenVerifier`` has no key-less mode, and the
  agent answers UNAUTHENTICATED until it has one;
- a token is used once: ``ReplayGuard`` remembers every accepted jti until its exp, in a SQLite
  file that outlives the agent's process, so a restart does not reopen the window.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from genserve.errors import ErrorCode, GenserveError

ALGORITHM = "RS256"
KEY_BITS = 2048
REQUIRED_CLAIMS = ("agent_id", "client_id", "model", "jti", "iat", "nbf", "exp", "iss", "aud")


def load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    """The signing key from ``path``; on first start a new key is written there with mode 0600.

    A key file readable by others is narrowed to 0600 rather than refused, so an operator who
    copied it with the wrong mode does not orphan every agent.
    """
    path = Path(path)
    if path.is_file():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise GenserveError(ErrorCode.INVALID_INPUT, f"cluster.key_file: {path} is not an RSA key")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(temp, path)  # atomic: a crash never leaves a half-written key
    return key


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: int  # unix seconds


class TokenIssuer:
    """Signs session tokens at the coordinator."""

    def __init__(self, key: rsa.RSAPrivateKey, issuer: str, lifetime_s: int) -> None:
        self._key = key
        self.issuer = issuer
        self.lifetime_s = lifetime_s
        self.public_key_pem = public_pem(key)

    def issue(self, agent_id: str, client_id: str, model: str, now: float | None = None) -> IssuedToken:
        issued = int(time.time() if now is None else now)
        jti = uuid.uuid4().hex
        claims = {
            "agent_id": agent_id,
            "client_id": client_id,
            "model": model,
            "jti": jti,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.lifetime_s,
            "iss": self.issuer,
            "aud": agent_id,
        }
        return IssuedToken(jwt.encode(claims, self._key, algorithm=ALGORITHM), jti, issued + self.lifetime_s)


class ReplayGuard:
    """Every jti accepted so far, each kept until its token expires (then it could not verify anyway).

    Kept in SQLite at ``path`` (the agent's ``cluster.agent_state_dir``), not in memory: tokens live
    ``token_lifetime_s`` (300 s), and an agent restarted within that time must still refuse the
    ones it already served. The alternative, refusing tokens whose iat predates the agent's
    registration, was rejected: it compares the coordinator's clock with the agent's (the proto
    carries no coordinator time to learn the offset from, and iat has one-second steps), and it
    would also refuse tokens issued before a restart that were never used. A persisted jti is
    exact and needs no clock. Each claim is one committed transaction (synchronous=FULL), so a
    token served just before a crash or power loss is still known afterwards. ``path`` None keeps
    the ids in memory (tests). Several agents may share the file: jtis are random and unique.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        target = ":memory:"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            target = str(path)
        self._db = sqlite3.connect(target, timeout=10, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS used (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL)")
        self._lock = threading.Lock()

    def claim(self, jti: str, expires_at: float, now: float | None = None) -> bool:
        """True the first time a jti is presented; False for a replay. Expired ids are dropped."""
        current = time.time() if now is None else now
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")  # another agent process may share the file
            self._db.execute("DELETE FROM used WHERE expires_at < ?", (current,))
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO used (jti, expires_at) VALUES (?, ?)", (jti, expires_at)
            )
            return inserted.rowcount == 1

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM used").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class TokenVerifier:
    """Checks tokens at an agent: signature by the coordinator's key, RS256 only, issuer, audience =
    this agent, time window, the model asked for, and single use."""

    def __init__(self, public_key_pem: str, issuer: str, agent_id: str, leeway_s: float = 5.0) -> None:
        try:
            self._key = serialization.load_pem_public_key(public_key_pem.encode())
        except ValueError as exc:
            raise GenserveError(ErrorCode.UNAUTHENTICATED, f"coordinator public key unusable: {exc}") from exc
        self.issuer = issuer
        self.agent_id = agent_id
        self.leeway_s = leeway_s

    def verify(self, token: str, model: str, replay: ReplayGuard | None = None) -> dict[str, Any]:
        """The token's claims, or GenserveError: UNAUTHENTICATED for a token that is not a valid
        session for this agent, PERMISSION_DENIED for a valid one that names another model."""
        if not token:
            raise GenserveError(ErrorCode.UNAUTHENTICATED, "session_token is required", field="session_token")
        try:
            claims = jwt.decode(
                token,
                self._key,  # type: ignore[arg-type]
                algorithms=[ALGORITHM],
                audience=self.agent_id,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise GenserveError(ErrorCode.UNAUTHENTICATED, "session_token has expired") from None
        except jwt.InvalidAudienceError:
            raise GenserveError(
                ErrorCode.UNAUTHENTICATED, f"session_token was issued for another agent, not {self.agent_id}"
            ) from None
        except jwt.InvalidIssuerError:
            raise GenserveError(ErrorCode.UNAUTHENTICATED, "session_token has the wrong issuer") from None
        except jwt.PyJWTError as exc:
            raise GenserveError(ErrorCode.UNAUTHENTICATED, f"session_token is not valid: {exc}") from None
        if claims.get("agent_id") != self.agent_id:
            raise GenserveError(ErrorCode.UNAUTHENTICATED, "session_token names another agent_id")
        if claims.get("model") != model:
            raise GenserveError(
                ErrorCode.PERMISSION_DENIED,
                f"model: the session_token is for {claims.get('model')!r}, not {model!r}",
                field="model",
            )
        if replay is not None and not replay.claim(str(claims["jti"]), float(claims["exp"]) + self.leeway_s):
            raise GenserveError(ErrorCode.UNAUTHENTICATED, "session_token was already used (jti replayed)")
        return claims
