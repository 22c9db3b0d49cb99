"""TLS for every gRPC server genserve runs (the main door, the coordinator, agents): the files
read and judged with ``ssl`` first, because gRPC itself only says "cannot listen" (server) or fails
every handshake (channel) on a bad file; the error names the settings at fault instead."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key, and the CA that client certificates must chain to (mTLS)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class TlsKeys:
    """The settings that name each file, for error messages."""

    cert: str
    key: str
    client_ca: str
    together: str  # e.g. "grpc.tls_cert_file, tls_key_file"


def read_pem(path: Path, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read {key} {path}: {exc.strerror}") from None


def check_pem(cert_file: Path | None, key_file: Path | None, ca_file: Path | None, keys: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("ALL:@SECLEVEL=0")  # judge the files, not their strength: gRPC decides that
    try:
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(cert_file, key_file, password="")  # no passphrase prompt
        if ca_file is not None:
            context.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, ValueError) as exc:
        raise OSError(f"{keys}: not a PEM certificate with its matching key, or a PEM CA ({exc})") from None


def server_credentials(tls: TlsFiles, keys: TlsKeys) -> grpc.ServerCredentials | None:
    """None for plaintext; with a client CA, clients must present a certificate it signed."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    pair = (read_pem(tls.key_file, keys.key), read_pem(tls.cert_file, keys.cert))
    ca = read_pem(tls.client_ca_file, keys.client_ca) if tls.client_ca_file else None
    check_pem(tls.cert_file, tls.key_file, tls.client_ca_file, keys.together)
    if ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=True)
