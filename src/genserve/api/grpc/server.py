"""The gRPC door: one grpc.aio server with every servicer, health and reflection, on the
configured ports, sharing the REST door's runtime and event loop."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from genserve.api.grpc.calls import ServiceCall
from genserve.api.grpc.gen import image_generation_pb2, image_generation_pb2_grpc, monolithic_pb2_grpc
from genserve.api.grpc.image_generation import ImageGeneration
from genserve.api.grpc.lipsync import LipsyncServicer
from genserve.api.grpc.lipsync import service_name as lipsync_service_name
from genserve.api.grpc.pipeline import add_pipeline_services
from genserve.engine.runtime import Runtime

log = logging.getLogger("genserve.grpc")
MIB = 1024 * 1024


class GrpcDoor:
    """Built before the event loop runs (settings only); the grpc.aio server itself is made in
    ``start``, on the loop that will serve it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings.grpc
        self.server: grpc.aio.Server | None = None
        self.health = HealthServicer()
        self.service_names: list[str] = []
        self.ports: list[int] = []

    @property
    def addresses(self) -> list[str]:
        return [f"{_host(self.settings.host)}:{port}" for port in self.ports]

    def _build(self) -> grpc.aio.Server:
        settings, runtime = self.settings, self.runtime
        limit = settings.max_message_mb * MIB
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.so_reuseport", 0),
            ]
        )
        timeout = runtime.settings.server.request_timeout_s
        names = add_pipeline_services(server, ServiceCall(runtime.engine, timeout))
        image_generation_pb2_grpc.add_ImageGenerationServiceServicer_to_server(
            ImageGeneration(
                runtime.engine,
                runtime.models.registry,
                settings.upload_max_mb * MIB,
                timeout,
                reply_max_bytes=limit,
            ),
            server,
        )
        names.append(image_generation_pb2.DESCRIPTOR.services_by_name["ImageGenerationService"].full_name)
        if runtime.lipsync is not None:
            servicer = LipsyncServicer(runtime.engine, runtime.lipsync, timeout, timeout)
            monolithic_pb2_grpc.add_MonolithicServiceServicer_to_server(servicer, server)
            names.append(lipsync_service_name())
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.service_names = names
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        for port in settings.ports:
            try:
                bound = server.add_insecure_port(f"{_host(settings.host)}:{port}")
            except RuntimeError:
                bound = 0
            if bound == 0:
                raise OSError(f"cannot listen on {settings.host}:{port} (grpc.host, grpc.ports)")
            self.ports.append(bound)
        return server

    async def start(self) -> None:
        self.server = self._build()
        await self.server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, serving)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs (health says NOT_SERVING), let running ones finish within the grace."""
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_s if grace is None else grace)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
