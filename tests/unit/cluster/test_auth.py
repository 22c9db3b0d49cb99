"""Session tokens: signing, every refusal an agent must make, the persisted key, replay."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from genserve.cluster.auth import ReplayGuard, TokenIssuer, TokenVerifier, load_or_create_key, public_pem
from genserve.errors import ErrorCode, GenserveError


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def issuer(key: rsa.RSAPrivateKey) -> TokenIssuer:
    return TokenIssuer(key, "coord", 60)


def verifier(issuer: TokenIssuer, agent_id: str = "agent-1") -> TokenVerifier:
    return TokenVerifier(issuer.public_key_pem, "coord", agent_id, leeway_s=0)


def refused(check: object, code: ErrorCode = ErrorCode.UNAUTHENTICATED) -> str:
    with pytest.raises(GenserveError) as info:
        check()  # type: ignore[operator]
    assert info.value.code is code, info.value
    return info.value.message


def test_token_carries_the_claims(issuer: TokenIssuer) -> None:
    issued = issuer.issue("agent-1", "client-9", "tiny-chat", now=1_000_000)
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert jwt.get_unverified_header(issued.token)["alg"] == "RS256"
    assert claims == {
        "agent_id": "agent-1",
        "client_id": "client-9",
        "model": "tiny-chat",
        "jti": issued.jti,
        "iat": 1_000_000,
        "nbf": 1_000_000,
        "exp": 1_000_060,
        "iss": "coord",
        "aud": "agent-1",
    }
    assert issued.expires_at == 1_000_060


def test_valid_token_verifies_once(issuer: TokenIssuer) -> None:
    issued = issuer.issue("agent-1", "c", "tiny-chat")
    guard = ReplayGuard()
    assert verifier(issuer).verify(issued.token, "tiny-chat", guard)["client_id"] == "c"
    assert "already used" in refused(lambda: verifier(issuer).verify(issued.token, "tiny-chat", guard))


def test_refusals(issuer: TokenIssuer, key: rsa.RSAPrivateKey) -> None:
    good = issuer.issue("agent-1", "c", "tiny-chat").token
    check = verifier(issuer)
    assert "another agent" in refused(lambda: verifier(issuer, "agent-2").verify(good, "tiny-chat"))
    assert "not 'other'" in refused(lambda: check.verify(good, "other"), ErrorCode.PERMISSION_DENIED)
    expired = issuer.issue("agent-1", "c", "tiny-chat", now=time.time() - 120).token
    assert "expired" in refused(lambda: check.verify(expired, "tiny-chat"))
    forger = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), "coord", 60)
    forged = forger.issue("agent-1", "c", "tiny-chat").token
    assert "not valid" in refused(lambda: check.verify(forged, "tiny-chat"))
    wrong_issuer = TokenIssuer(key, "someone-else", 60).issue("agent-1", "c", "tiny-chat").token
    assert "issuer" in refused(lambda: check.verify(wrong_issuer, "tiny-chat"))
    # alg confusion: an HS256 token keyed with the public key must not pass.
    claims = jwt.decode(good, options={"verify_signature": False})
    hs = jwt.encode(claims, "x" * 32, algorithm="HS256")
    refused(lambda: check.verify(hs, "tiny-chat"))
    unsigned = jwt.encode(claims, None, algorithm="none")
    refused(lambda: check.verify(unsigned, "tiny-chat"))
    refused(lambda: check.verify("", "tiny-chat"))
    # A claim missing (no jti) is refused even with a good signature.
    no_jti = jwt.encode({k: v for k, v in claims.items() if k != "jti"}, key, algorithm="RS256")
    assert "jti" in refused(lambda: check.verify(no_jti, "tiny-chat"))


def test_key_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "cluster" / "key.pem"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_pem(load_or_create_key(path)) == public_pem(first)
    path.chmod(0o644)
    load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_replay_guard_forgets_expired_ids() -> None:
    guard = ReplayGuard()
    assert guard.claim("a", expires_at=100, now=50)
    assert not guard.claim("a", expires_at=100, now=60)
    assert guard.claim("b", expires_at=300, now=200)  # "a" expired at 100 and is dropped
    assert len(guard) == 1


def test_used_ids_outlive_the_process_that_recorded_them(tmp_path: Path) -> None:
    path = tmp_path / "state" / "used_tokens.sqlite3"
    guard = ReplayGuard(path)
    assert guard.claim("a", expires_at=100, now=50)
    guard.close()
    reopened = ReplayGuard(path)  # an agent restarted within the token's lifetime
    assert not reopened.claim("a", expires_at=100, now=60)
    assert reopened.claim("b", expires_at=300, now=200) and len(reopened) == 1  # "a" expired
    other_process = ReplayGuard(path)  # agents on one host may share the folder
    assert not other_process.claim("b", expires_at=300, now=210)
