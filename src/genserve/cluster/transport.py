"""What both cluster roles need of gRPC beyond the shared server builder: TLS or mTLS from the
cluster settings, the channel agents use to reach the coordinator, and a stop on a signal. Kept
apart so that coordinator.py and agent.py hold only their services' logic."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc

from genserve.rpc.server import MIB, BuiltServer, Listener, build_server, server_options
from genserve.rpc.tls import TlsFiles, TlsKeys, check_pem, read_pem
from genserve.rpc.tls import server_credentials as rpc_server_credentials

# Keepalive pings, even between calls, let a coordinator notice an agent that vanished.
SERVER_OPTIONS = server_options(16, 20, 10, min_ping_interval_s=5, ping_without_calls=True)
# Keepalive pings let an agent notice a coordinator that vanished without closing the stream.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * MIB),
]


def server_credentials(tls: TlsFiles, prefix: str) -> grpc.ServerCredentials | None:
    """None for plaintext; ``prefix`` names the settings keys in error messages."""
    keys = TlsKeys(
        f"cluster.{prefix}tls_cert_file",
        f"cluster.{prefix}tls_key_file",
        f"cluster.{prefix}tls_client_ca_file",
        f"cluster.{prefix}tls_cert_file, {prefix}tls_key_file, {prefix}tls_client_ca_file",
    )
    return rpc_server_credentials(tls, keys)


def cluster_server(names: list[str], host: str, port: int, tls: TlsFiles, role: str) -> BuiltServer:
    """A server for one role (coordinator or agent) with health and reflection, bound to host:port.

    The caller adds its servicers before ``start()``: binding first lets a servicer depend on the
    bound port (port 0 picks a free one). ``role`` names the settings keys in error messages.
    """
    credentials = server_credentials(tls, "" if role == "coordinator" else f"{role}_")
    listener = Listener(host, port, f"cluster.{role}_host, cluster.{role}_port", credentials)
    return build_server(names, [listener], SERVER_OPTIONS)


def channel_credentials(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials | None:
    """TLS when a CA is given (with a client certificate when one is), None for plaintext.

    The agent calls it once at start, so that a missing or bad file stops it there, and again for
    every connection, so that renewed files are used when it reconnects.
    """
    if ca_file is None:
        return None
    ca = read_pem(ca_file, "cluster.coordinator_ca_file")
    key = read_pem(key_file, "cluster.agent_tls_key_file") if key_file else None
    cert = read_pem(cert_file, "cluster.agent_tls_cert_file") if cert_file else None
    keys = "cluster.coordinator_ca_file, agent_tls_cert_file, agent_tls_key_file"
    check_pem(cert_file, key_file, ca_file, keys)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def client_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


async def until_signalled() -> None:
    """Return on SIGTERM or SIGINT: both cluster processes then stop their servers gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def announce_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
