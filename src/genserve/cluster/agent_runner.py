"""The running agent: its AgentService server (with health and reflection) and its coordinator link.

Split from agent.py so that the servicer stays about RPCs; this module is about the process: which
id and endpoint it advertises, what figures it registers with, and a clean stop on a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
from pathlib import Path

import grpc

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.api.grpc.gen import titancompute_pb2_grpc as rpc
from genserve.cluster import machine
from genserve.cluster.agent import SERVICE_NAME, AgentServicer
from genserve.cluster.agent_link import CoordinatorLink
from genserve.cluster.auth import ReplayGuard
from genserve.cluster.routing import LOADED_MODELS, TOKENS_PER_SECOND
from genserve.cluster.transport import TlsFiles, cluster_server
from genserve.config import Settings
from genserve.engine.runtime import Runtime
from genserve.models.registry import ModelKind
from genserve.rpc.server import bracket

log = logging.getLogger("genserve.cluster.agent")
WILDCARDS = {"0.0.0.0", "::", "[::]", ""}
USED_TOKENS_FILE = "used_tokens.sqlite3"


class Agent:
    def __init__(self, settings: Settings, runtime: Runtime, coordinator: str | None = None) -> None:
        self.settings = settings
        self.cluster = settings.cluster
        self.runtime = runtime
        self.target = coordinator or self.cluster.coordinator_address
        self.server: grpc.aio.Server | None = None
        self.servicer: AgentServicer | None = None
        self.link: CoordinatorLink | None = None
        self.agent_id = ""
        self.endpoint = ""
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> str:
        """Listen first (the bound port names the agent and its endpoint), then register."""
        cluster = self.cluster
        tls = TlsFiles(
            cluster.agent_tls_cert_file, cluster.agent_tls_key_file, cluster.agent_tls_client_ca_file
        )
        built = cluster_server([SERVICE_NAME], cluster.agent_host, cluster.agent_port, tls, "agent")
        self.server, port = built.server, built.ports[0]
        self.agent_id = cluster.agent_id or f"{socket.gethostname()}-{port}"
        host = socket.getfqdn() if cluster.agent_host in WILDCARDS else cluster.agent_host
        self.endpoint = cluster.advertised_endpoint or f"{bracket(host)}:{port}"
        self.servicer = AgentServicer(
            cluster, self.runtime, self.agent_id, open_used_tokens(cluster.agent_state_dir)
        )
        rpc.add_AgentServiceServicer_to_server(self.servicer, self.server)
        # Before serving: the link reads the TLS files for the coordinator, and a bad one stops us.
        self.link = CoordinatorLink(cluster, self.target, self.registration, self.health, self._on_key)
        self.servicer.link = self.link.state
        await self.server.start()
        await built.mark_serving()
        machine.cpu_percent()  # primes psutil's counter, so the first update is not 0 by accident
        self._tasks = [asyncio.create_task(self.link.run())]
        return self.endpoint

    def _on_key(self, answer: pb.PublicKeyResponse) -> None:
        assert self.servicer is not None
        self.servicer.set_key(answer)

    def registration(self) -> pb.AgentRegistration:
        assert self.servicer is not None
        figures = machine.memory(self.runtime.engine.devices)
        capabilities = {
            "device": ",".join(self.runtime.engine.devices),
            LOADED_MODELS: ",".join(self.servicer.loaded_models()),
            "software": "genserve",
        }
        if self.servicer.tokens_per_second > 0:
            # Two significant digits: a new registration only when the speed really moved.
            capabilities[TOKENS_PER_SECOND] = f"{float(f'{self.servicer.tokens_per_second:.2g}'):g}"
        return pb.AgentRegistration(
            agent_id=self.agent_id,
            endpoint=self.endpoint,
            total_vram_mb=figures.total_vram_mb,
            total_ram_mb=figures.total_ram_mb,
            max_jobs=self.cluster.max_jobs,
            supported_models=self.servicer.models(),
            capabilities=capabilities,
        )

    def health(self) -> pb.HealthUpdate:
        assert self.servicer is not None
        figures = machine.memory(self.runtime.engine.devices)
        running, queued = self.servicer.job_counts()
        self.servicer.cpu_percent = machine.cpu_percent()
        return pb.HealthUpdate(
            agent_id=self.agent_id,
            free_vram_mb=figures.free_vram_mb,
            free_ram_mb=figures.free_ram_mb,
            running_jobs=running,
            queued_jobs=queued,
            cpu_percent=self.servicer.cpu_percent,
        )

    async def stop(self, grace: float = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.server is not None:
            await self.server.stop(grace)
        if self.servicer is not None:
            self.servicer.replay.close()


def preload(runtime: Runtime, names: list[str]) -> None:
    """Load ``cluster.preload`` before registering: a name not under models/llm/ stops the agent
    here, naming it, rather than at the first client's stream."""
    registry = runtime.models.registry
    wanted = registry.available(ModelKind.LLM) if "*" in names else names
    device = runtime.engine.devices[0]
    for name in wanted:
        registry.resolve(ModelKind.LLM, name, "cluster.preload")
        stats = runtime.models.load(ModelKind.LLM, name, device)
        log.info("preloaded llm/%s on %s", name, stats.device)


def open_used_tokens(state_dir: Path) -> ReplayGuard:
    """The agent's persisted record of used tokens; a folder it cannot write stops it at start,
    naming the setting, rather than at the first client's stream."""
    path = Path(state_dir) / USED_TOKENS_FILE
    try:
        return ReplayGuard(path)
    except (OSError, sqlite3.Error) as exc:
        raise OSError(f"cluster.agent_state_dir: cannot keep used session tokens in {path}: {exc}") from None
