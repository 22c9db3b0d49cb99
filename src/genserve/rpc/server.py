"""One way to build a grpc.aio server: options, health checking and reflection for the services it
will serve, bound to its ports (plaintext or TLS) before any servicer is added, so a servicer may
depend on the port the OS picked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from genserve.rpc.decoding import DecodeRequestsInterceptor

MIB = 1024 * 1024


@dataclass(frozen=True)
class Listener:
    """Where a server listens, and the settings that chose it (named when it cannot bind)."""

    host: str
    port: int
    keys: str  # e.g. "grpc.host, grpc.ports"
    credentials: grpc.ServerCredentials | None = None


@dataclass
class BuiltServer:
    server: grpc.aio.Server
    health: HealthServicer
    ports: list[int]  # bound, in the listeners' order (port 0 becomes the one the OS picked)
    names: list[str]  # the services it serves

    async def mark_serving(self) -> None:
        for name in ["", *self.names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)


def server_options(
    max_message_mb: int,
    keepalive_time_s: float,
    keepalive_timeout_s: float,
    min_ping_interval_s: float = 10.0,
    ping_without_calls: bool = False,
) -> list[tuple[str, int]]:
    limit = max_message_mb * MIB
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", int(min_ping_interval_s * 1000)),
        ("grpc.so_reuseport", 0),  # a busy port is an error, not a second server on it
    ]
    if ping_without_calls:
        options.append(("grpc.keepalive_permit_without_calls", 1))
    return options


def build_server(
    names: Sequence[str],
    listeners: Sequence[Listener],
    options: Sequence[tuple[str, int]],
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> BuiltServer:
    """A server with health and reflection for ``names``, bound to every listener.

    The caller adds its servicers, then starts it and calls ``mark_serving``. A port that cannot
    be bound raises OSError naming the listener's settings. Every method, health and reflection
    included, answers an undecodable request with INVALID_ARGUMENT (``DecodeRequestsInterceptor``);
    ``interceptors`` run inside it.
    """
    server = grpc.aio.server(options=list(options), interceptors=[DecodeRequestsInterceptor(), *interceptors])
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    ports = []
    for listener in listeners:
        address = f"{bracket(listener.host)}:{listener.port}"
        try:
            if listener.credentials is not None:
                bound = server.add_secure_port(address, listener.credentials)
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(f"cannot listen on {address} ({listener.keys})")
        ports.append(bound)
    return BuiltServer(server, health, ports, list(names))


def bracket(host: str) -> str:
    """An IPv6 address as a host:port target needs brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
