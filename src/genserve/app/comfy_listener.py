"""ComfyUI's own listener (``comfy.port``, 8188 as ComfyUI): a second uvicorn server in the same
process and on the same event loop as the REST door, over the REST door's parts.

It is a door beside the others (started after the prompt queue, stopped before it): ``start``
opens its socket to requests, ``stop`` stops accepting, lets in-flight requests finish (up to
``server.shutdown_grace_s``) and closes its WebSockets.
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from genserve.api.rest.comfy_app import build_comfy_app
from genserve.api.rest.comfy_frontend import frontend_dir, templates_dir
from genserve.api.rest.dependencies import ComfyUi, RestParts
from genserve.app.http_protocol import bounded_httptools
from genserve.config import Settings
from genserve.storage.userdata import UserFiles

log = logging.getLogger("genserve.server")


def comfy_ui_parts(settings: Settings) -> ComfyUi:
    comfy = settings.comfy
    users = UserFiles(comfy.user_dir, comfy.max_userdata_bytes, comfy.max_userdata_files)
    users.root.mkdir(parents=True, exist_ok=True)
    return ComfyUi(users, frontend_dir(), templates_dir())


class ComfyListener:
    def __init__(self, parts: RestParts, settings: Settings, sock: socket.socket) -> None:
        server = settings.server
        ui = comfy_ui_parts(settings)
        self.frontend = ui.frontend_dir is not None
        config = uvicorn.Config(
            build_comfy_app(parts, ui, settings),
            ssl_certfile=server.tls_cert_file,
            ssl_keyfile=server.tls_key_file,
            log_config=None,
            access_log=False,
            server_header=False,
            http=bounded_httptools(server.max_header_bytes),
            timeout_graceful_shutdown=server.shutdown_grace_s,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.sock = sock
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if server.tls_cert_file else 'http'}://{shown}:{port}"

    async def start(self) -> None:
        config = self.server.config
        if not config.loaded:
            config.load()
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup(sockets=[self.sock])
        web_ui = "web UI and " if self.frontend else ""
        log.info("ComfyUI    %s  (%sComfyUI's API, also under /api)", self.url, web_ui)

    async def stop(self) -> None:
        if self.server.started:
            await self.server.shutdown()
