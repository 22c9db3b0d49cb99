"""The gRPC door: one grpc.aio server with every servicer, health and reflection, on the
configured ports, sharing the REST door's runtime and event loop."""

from __future__ import annotations

import logging

import grpc

from genserve.api.grpc.calls import ServiceCall
from genserve.api.grpc.gen import image_generation_pb2, image_generation_pb2_grpc, monolithic_pb2_grpc
from genserve.api.grpc.image_generation import ImageGeneration
from genserve.api.grpc.lipsync import LipsyncServicer
from genserve.api.grpc.lipsync import service_name as lipsync_service_name
from genserve.api.grpc.pipeline import add_pipeline_services, pipeline_service_names
from genserve.auth.guard import Guard
from genserve.auth.keys import KeyStore
from genserve.auth.principal import Scope
from genserve.engine.runtime import Runtime
from genserve.models.uploads import remove_stale_uploads
from genserve.rpc.auth import AuthInterceptor
from genserve.rpc.server import MIB, BuiltServer, Listener, bracket, build_server, server_options
from genserve.rpc.tls import TlsFiles, TlsKeys, server_credentials

log = logging.getLogger("genserve.grpc")

# What changes the server for everyone: model files written, lip-sync models loaded or unloaded.
ADMIN_METHODS = {
    "/drawthings.ImageGenerationService/UploadFile": Scope.ADMIN,
    "/monolithic.MonolithicService/LoadModel": Scope.ADMIN,
    "/monolithic.MonolithicService/UnloadModel": Scope.ADMIN,
}


class GrpcDoor:
    """Built before the event loop runs (settings only); the grpc.aio server itself is made in
    ``start``, on the loop that will serve it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings.grpc
        self.built: BuiltServer | None = None
        self.service_names: list[str] = []
        self.ports: list[int] = []

    @property
    def server(self) -> grpc.aio.Server | None:
        return self.built.server if self.built is not None else None

    @property
    def addresses(self) -> list[str]:
        return [f"{bracket(self.settings.host)}:{port}" for port in self.ports]

    def _names(self) -> list[str]:
        names = [
            *pipeline_service_names(),
            image_generation_pb2.DESCRIPTOR.services_by_name["ImageGenerationService"].full_name,
        ]
        if self.runtime.lipsync is not None:
            names.append(lipsync_service_name())
        return names

    def _build(self) -> BuiltServer:
        settings, runtime = self.settings, self.runtime
        options = server_options(
            settings.max_message_mb, settings.keepalive_time_s, settings.keepalive_timeout_s
        )
        tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file)
        keys = TlsKeys("grpc.tls_cert_file", "grpc.tls_key_file", "", "grpc.tls_cert_file, grpc.tls_key_file")
        credentials = server_credentials(tls, keys)
        listeners = [
            Listener(settings.host, port, "grpc.host, grpc.ports", credentials) for port in settings.ports
        ]
        guard = Guard(KeyStore(runtime.settings.auth.keys_file))
        built = build_server(self._names(), listeners, options, [AuthInterceptor(guard, ADMIN_METHODS)])
        timeout = runtime.settings.server.request_timeout_s
        add_pipeline_services(built.server, ServiceCall(runtime.engine, timeout))
        remove_stale_uploads(runtime.models.registry)  # what uploads cut off by a kill left behind
        image_generation = ImageGeneration(
            runtime.engine,
            runtime.models.registry,
            settings.upload_max_mb * MIB,
            timeout,
            reply_max_bytes=settings.max_message_mb * MIB,
        )
        image_generation_pb2_grpc.add_ImageGenerationServiceServicer_to_server(image_generation, built.server)
        if runtime.lipsync is not None:
            servicer = LipsyncServicer(runtime.engine, runtime.lipsync, timeout, timeout)
            monolithic_pb2_grpc.add_MonolithicServiceServicer_to_server(servicer, built.server)
        return built

    async def start(self) -> None:
        self.built = self._build()
        self.service_names, self.ports = self.built.names, self.built.ports
        await self.built.server.start()
        await self.built.mark_serving()

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs (health says NOT_SERVING), let running ones finish within the grace."""
        if self.built is None:
            return
        await self.built.health.enter_graceful_shutdown()
        await self.built.server.stop(self.settings.shutdown_grace_s if grace is None else grace)
