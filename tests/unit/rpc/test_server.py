"""The shared gRPC server builder: health and reflection for the named services, every listener
bound (port 0 gets a free one), and a busy port refused naming the settings that chose it."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.rpc.server import Listener, build_server, server_options


def test_a_built_server_answers_health_for_its_services() -> None:
    async def scenario() -> dict[str, int]:
        built = build_server(
            ["demo.Service"], [Listener("127.0.0.1", 0, "x.host, x.port")], server_options(4, 60, 20)
        )
        await built.server.start()
        await built.mark_serving()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{built.ports[0]}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                return {
                    name: (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status
                    for name in ("", "demo.Service")
                }
        finally:
            await built.server.stop(0)

    serving = health_pb2.HealthCheckResponse.SERVING
    assert asyncio.run(scenario()) == {"": serving, "demo.Service": serving}


def test_a_busy_port_is_refused_naming_its_settings() -> None:
    async def scenario(port: int) -> None:  # grpc.aio builds servers on a running loop
        listener = Listener("127.0.0.1", port, "grpc.host, grpc.ports")
        build_server([], [listener], server_options(4, 60, 20))

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        expected = rf"cannot listen on 127.0.0.1:{port} \(grpc.host, grpc.ports\)"
        with pytest.raises(OSError, match=expected):
            asyncio.run(scenario(port))
