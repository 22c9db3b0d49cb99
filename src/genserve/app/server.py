"""``genserve serve``: the doors on one runtime, with a start-up banner and a graceful stop.

The REST door runs on uvicorn over a socket bound here, so the banner can print the real
address (port 0 picks a free one) before the first request; the gRPC door runs on the same
event loop. On SIGTERM or Ctrl-C both stop accepting and let in-flight work finish (up to
``server.shutdown_grace_s`` and ``grpc.shutdown_grace_s``); then the engine closes and the models
unload. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import uvicorn

from genserve.api.files import FileDoor
from genserve.api.grpc.server import GrpcDoor
from genserve.api.rest import build_app
from genserve.api.rest.dependencies import parts_of
from genserve.app.comfy_listener import ComfyListener
from genserve.app.http_protocol import bounded_httptools
from genserve.app.malloc_tuning import IdleTrimmer
from genserve.app.runtime import Runtime, build_runtime
from genserve.app.web import WebParts, build_web_parts
from genserve.auth.exposure import check_exposure
from genserve.auth.keys import KeyStore
from genserve.config import ConfigError, Settings
from genserve.errors import ErrorCode, GenserveError
from genserve.rpc.tls import check_pem, read_pem

log = logging.getLogger("genserve.server")


def bind(host: str, port: int, section: str = "server") -> socket.socket:
    """A listening TCP socket; IPv6 when the host is an IPv6 address. A failure names the
    ``section``'s host and port settings."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({section}.host, {section}.port): {exc.strerror}"
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def check_tls(cert: Path | None, key: Path | None, section: str) -> bool:
    """Whether ``section`` serves TLS; a certificate without its key (or a bad pair) stops start-up
    naming the settings, not somewhere inside the TLS library."""
    names = f"{section}.tls_cert_file, {section}.tls_key_file"
    if (cert is None) != (key is None):
        raise GenserveError(ErrorCode.INVALID_INPUT, f"{names}: set both or neither", field=names)
    if cert is not None and key is not None:
        read_pem(cert, f"{section}.tls_cert_file")
        read_pem(key, f"{section}.tls_key_file")
        check_pem(cert, key, None, names)
    return cert is not None


def check_access(settings: Settings) -> None:
    """A door beyond loopback with no API keys stops start-up unless auth.allow_anonymous says so."""
    listeners = {"server.host": settings.server.host}
    if settings.grpc.enabled:
        listeners["grpc.host"] = settings.grpc.host
    if comfy_listens(settings):
        listeners["comfy.host"] = settings.comfy.host
    keys = KeyStore(settings.auth.keys_file)
    check_exposure(listeners, bool(keys), settings.auth.allow_anonymous)


def comfy_listens(settings: Settings) -> bool:
    """ComfyUI's listener serves the prompt queue, so it runs only beside it."""
    return settings.comfy.enabled and settings.workflows.enabled


class BackgroundDoor(Protocol):
    """A door that runs beside REST on the same loop: the drop folder, Kafka."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class RestServer(uvicorn.Server):
    """uvicorn's server that announces every address once it accepts requests."""

    def __init__(
        self,
        runtime: Runtime,
        sock: socket.socket,
        grpc_door: GrpcDoor | None = None,
        others: Sequence[BackgroundDoor] = (),
        web: WebParts | None = None,
        comfy_sock: socket.socket | None = None,
    ) -> None:
        """With ``comfy_sock`` (and the prompt queue) ComfyUI's listener serves on it too."""
        settings = runtime.settings.server
        self.web = web if web is not None else build_web_parts(runtime)
        web = self.web
        app = build_app(
            runtime,
            prompts=web.prompts,
            bridge=web.bridge,
            catalog=web.catalog,
            client_owners=web.client_owners,
        )
        self.metrics = parts_of(app).metrics
        config = uvicorn.Config(
            app,
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
            log_config=None,  # genserve's logging is already configured
            access_log=False,  # the app logs each request with its request id
            server_header=False,
            http=bounded_httptools(settings.max_header_bytes),
            timeout_graceful_shutdown=settings.shutdown_grace_s,
            lifespan="on",
        )
        super().__init__(config)
        self.runtime = runtime
        self.grpc = grpc_door
        self.others = list(others)
        self.comfy: ComfyListener | None = None
        if comfy_sock is not None and web.prompts is not None:
            self.comfy = ComfyListener(parts_of(app), runtime.settings, comfy_sock)
            self.others.append(self.comfy)
        self.sock = sock
        self.url = url_of(sock, settings.tls_cert_file is not None)
        self.stop_signals: list[int] = []
        self._preload: asyncio.Task[None] | None = None
        self.trimmer = IdleTrimmer(self._busy, settings.trim_idle_s)
        self._seen_requests = 0

    def _busy(self) -> bool:
        """Work running or waiting in the engine, or any HTTP request since the last look."""
        seen = self.metrics.requests_started
        working = any(load.running or load.waiting for load in self.runtime.engine.loads())
        busy, self._seen_requests = working or seen != self._seen_requests, seen
        return busy

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.runtime.models.start_idle_reaper()
        await self.web.start()
        if self.grpc is not None:
            await self.grpc.start()
            if self.runtime.lipsync is not None:
                # Preloading may take long with real models: the server answers meanwhile.
                self._preload = asyncio.create_task(asyncio.to_thread(self.runtime.lipsync.preload))
        for door in self.others:
            await door.start()
        await super().startup(sockets)
        self.trimmer.start()
        if self.started:
            host = self.sock.getsockname()[0]
            note = " (every interface)" if host in ("0.0.0.0", "::") else ""
            log.info("REST       %s%s", self.url, note)
            log.info("API docs   %s/docs  (OpenAPI: %s/openapi.json)", self.url, self.url)
            log.info("health     %s/health/live  %s/health/ready", self.url, self.url)
            log.info("metrics    %s/metrics", self.url)
            log.info("OpenAI     %s/v1  (chat/completions, completions, models)", self.url)
            if self.grpc is not None:
                services = ", ".join(n.rpartition(".")[2] or n for n in self.grpc.service_names)
                log.info("gRPC       %s  (%s, health, reflection)", "  ".join(self.grpc.addresses), services)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """As uvicorn's, but a stop by signal that shut down cleanly exits 0 instead of
        re-raising the signal (which would end in a KeyboardInterrupt traceback on Ctrl-C)."""
        with super().capture_signals():
            try:
                yield
            finally:
                self.stop_signals = list(self._captured_signals)
                self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("shutting down: finishing in-flight requests, then unloading models")
        if self.web.bridge is not None:
            # uvicorn closes WebSockets (1012) first thing in its shutdown: a bridge client must
            # hear before that whether its job stays queued.
            await self.web.bridge.announce_shutdown()
        await self.trimmer.stop()
        stopping = [super().shutdown(sockets)]
        if self.grpc is not None:
            stopping.append(self.grpc.stop())
        stopping.extend(door.stop() for door in self.others)
        try:
            await asyncio.gather(*stopping)
        finally:
            try:
                await self.web.stop()  # the running prompt is interrupted, waiting ones dropped
            finally:
                # Running work finishes, queued work is dropped, then every model is unloaded.
                await asyncio.to_thread(self.runtime.close)
        log.info("stopped")


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run until a signal; models dir, devices and config are checked before binding."""
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    check_access(settings)
    check_tls(settings.server.tls_cert_file, settings.server.tls_key_file, "server")
    if settings.grpc.enabled:
        check_tls(settings.grpc.tls_cert_file, settings.grpc.tls_key_file, "grpc")
    runtime = build_runtime(settings)
    if not runtime.models.registry.entries():
        log.warning(
            "the models folder %s holds no models; `genserve models demo` builds a demo set",
            settings.models.dir,
        )
    sock: socket.socket | None = None
    comfy_sock: socket.socket | None = None
    try:
        sock = bind(settings.server.host, settings.server.port)
        if comfy_listens(settings):
            comfy_sock = bind(settings.comfy.host, settings.comfy.port, "comfy")
        grpc_door = GrpcDoor(runtime) if settings.grpc.enabled else None
        others: list[BackgroundDoor] = []
        if settings.files.enabled:
            others.append(FileDoor(runtime))
        if settings.kafka.enabled:
            from genserve.api.kafka.door import KafkaDoor  # aiokafka only when Kafka is on

            others.append(KafkaDoor(runtime))
        server = RestServer(runtime, sock, grpc_door, others, comfy_sock=comfy_sock)
    except (OSError, GenserveError, ConfigError):
        for opened in (sock, comfy_sock):
            if opened is not None:
                opened.close()
        runtime.close()
        raise
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if comfy_sock is not None:
            comfy_sock.close()
