"""``genserve coordinator``: titancompute.v1.CoordinatorService.

Agents register, then keep one ReportHealth stream open and send an update every heartbeat
interval; each update gets one HealthAck. A client's RequestInference picks an agent (routing.py)
and returns its endpoint with a session token signed by the coordinator's persisted key (auth.py).
Agents silent for longer than the heartbeat timeout are dropped. All state lives on the event loop
thread, so the agent table needs no lock. The coordinator does not import torch: it starts in a
fraction of a second on a host without models.

An agent id is held by the endpoint that registered it while its record is live (a health stream
bound to it is open, or its last health is within the heartbeat timeout): a RegisterAgent for that
id from another endpoint is ALREADY_EXISTS, so nobody can redirect a live agent's clients; the same
endpoint registering again (a restart, new capabilities) is accepted. A health stream binds, at its
first accepted update, to the endpoint that then holds the id, and never refreshes a record that
another endpoint registered later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator

import grpc

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.api.grpc.gen import titancompute_pb2_grpc as rpc
from genserve.cluster.auth import ALGORITHM, TokenIssuer, load_or_create_key
from genserve.cluster.routing import AgentRecord, choose
from genserve.cluster.transport import TlsFiles, cluster_server
from genserve.config.cluster import ClusterSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.rpc.errors import abort

log = logging.getLogger("genserve.cluster.coordinator")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CoordinatorService"].full_name


def _invalid(field: str, problem: str) -> GenserveError:
    return GenserveError(ErrorCode.INVALID_INPUT, f"{field}: {problem}", field=field)


class AgentTable:
    """Registered agents by id, their latest health, and who is past the heartbeat timeout."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.agents: dict[str, AgentRecord] = {}
        self.streams: Counter[tuple[str, str]] = Counter()  # open health streams by (agent id, endpoint)

    def live(self, record: AgentRecord, now: float | None = None) -> bool:
        """A health stream bound to the record is open, or its last health is within the timeout."""
        current = time.monotonic() if now is None else now
        return self.streams[(record.agent_id, record.endpoint)] > 0 or record.alive(current, self.timeout_s)

    def register(self, reg: pb.AgentRegistration) -> bool:
        """Add or replace an agent; True when it was already known (a re-registration).

        A re-registration from the same endpoint keeps the latest health, so an agent that only
        updates its capabilities (a model loaded, a new speed) is not treated as idle meanwhile.
        Another endpoint may take the id only once the record holding it is no longer live:
        before, anyone could re-register a live agent's id and send its clients elsewhere.
        """
        old = self.agents.get(reg.agent_id)
        if old is not None and old.endpoint != reg.endpoint and self.live(old):
            raise GenserveError(
                ErrorCode.ALREADY_EXISTS,
                f"agent_id: agent {reg.agent_id} is registered from endpoint {old.endpoint} and still "
                f"live; another endpoint may take the id once it has sent no health for "
                f"{self.timeout_s:g} s",
                field="agent_id",
            )
        record = AgentRecord(
            agent_id=reg.agent_id,
            endpoint=reg.endpoint,
            total_vram_mb=reg.total_vram_mb,
            total_ram_mb=reg.total_ram_mb,
            max_jobs=reg.max_jobs,
            supported_models=frozenset(reg.supported_models),
            capabilities=dict(reg.capabilities),
        )
        if old is not None and old.endpoint == reg.endpoint:
            for name in ("free_vram_mb", "free_ram_mb", "running_jobs", "queued_jobs", "cpu_percent"):
                setattr(record, name, getattr(old, name))
            record.rtt_ms, record.reservations, record.last_heartbeat = (
                old.rtt_ms,
                old.reservations,
                old.last_heartbeat,
            )
        self.agents[reg.agent_id] = record
        return old is not None

    def bind(self, agent_id: str, endpoint: str) -> None:
        self.streams[(agent_id, endpoint)] += 1

    def unbind(self, agent_id: str, endpoint: str) -> None:
        self.streams[(agent_id, endpoint)] -= 1
        if self.streams[(agent_id, endpoint)] <= 0:
            del self.streams[(agent_id, endpoint)]

    def health(self, update: pb.HealthUpdate) -> AgentRecord | None:
        record = self.agents.get(update.agent_id)
        if record is None:
            return None
        record.free_vram_mb = max(0, update.free_vram_mb)
        record.free_ram_mb = max(0, update.free_ram_mb)
        record.running_jobs = max(0, update.running_jobs)
        record.queued_jobs = max(0, update.queued_jobs)
        record.cpu_percent = update.cpu_percent if math.isfinite(update.cpu_percent) else 100.0
        record.rtt_ms = update.rtt_ms if math.isfinite(update.rtt_ms) and update.rtt_ms >= 0 else 0.0
        record.last_seen = time.monotonic()
        record.settle(record.last_seen)
        record.last_heartbeat = update.timestamp or int(time.time())
        return record

    def expire(self, now: float | None = None) -> list[str]:
        current = time.monotonic() if now is None else now
        dead = [a.agent_id for a in self.agents.values() if not a.alive(current, self.timeout_s)]
        for agent_id in dead:
            del self.agents[agent_id]
        return dead

    def alive(self) -> list[AgentRecord]:
        now = time.monotonic()
        return [a for a in self.agents.values() if a.alive(now, self.timeout_s)]


class CoordinatorServicer(rpc.CoordinatorServiceServicer):
    def __init__(self, settings: ClusterSettings, issuer: TokenIssuer) -> None:
        self.settings = settings
        self.issuer = issuer
        self.table = AgentTable(settings.heartbeat_timeout_s)
        self.started = time.monotonic()
        self.total_jobs = 0

    async def RegisterAgent(
        self, request: pb.AgentRegistration, context: grpc.aio.ServicerContext
    ) -> pb.RegistrationResponse:
        try:
            _check_registration(request)
            again = self.table.register(request)
        except GenserveError as err:
            await abort(context, err)
        models = ", ".join(request.supported_models) or "no models"
        log.info(
            "agent %s %s at %s (%s)",
            request.agent_id,
            "re-registered" if again else "registered",
            request.endpoint,
            models,
        )
        return pb.RegistrationResponse(
            status="registered",
            message=f"agent {request.agent_id} {'re-registered' if again else 'registered'}; serves {models}",
            heartbeat_interval_seconds=self.settings.heartbeat_interval_s,
        )

    async def ReportHealth(
        self, request_iterator: AsyncIterator[pb.HealthUpdate], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HealthAck]:
        """One ack per update, on the one stream the agent keeps open. An unknown agent (the
        coordinator restarted, or dropped it) is told so, and re-registers on the same stream's
        next round; agents that open a stream per update (the original's) work too.

        The stream binds each agent id to the endpoint holding it at its first accepted update,
        and counts as that record's open stream until it ends (see ``AgentTable.live``). Should
        the id later be held by another endpoint, this stream's updates are answered
        "unknown_agent" and refresh nothing: the record is someone else's registration.
        """
        bound: dict[str, str] = {}  # agent id -> the endpoint this stream's updates are for
        try:
            async for update in request_iterator:
                agent_id = update.agent_id
                record = self.table.agents.get(agent_id) if agent_id else None
                if record is None:
                    yield pb.HealthAck(
                        agent_id=agent_id,
                        status="unknown_agent" if agent_id else "error",
                        message="not registered: call RegisterAgent" if agent_id else "agent_id is required",
                    )
                    continue
                if agent_id not in bound:
                    bound[agent_id] = record.endpoint
                    self.table.bind(agent_id, record.endpoint)
                if bound[agent_id] != record.endpoint:
                    yield pb.HealthAck(
                        agent_id=agent_id,
                        status="unknown_agent",
                        message=f"agent {agent_id} is now registered from {record.endpoint}, not "
                        f"{bound[agent_id]}: this stream no longer reports for it",
                    )
                    continue
                self.table.health(update)
                yield pb.HealthAck(agent_id=agent_id, status="ok", message="")
        finally:
            for agent_id, endpoint in bound.items():
                self.table.unbind(agent_id, endpoint)

    async def RequestInference(
        self, request: pb.InferenceRequest, context: grpc.aio.ServicerContext
    ) -> pb.InferenceResponse:
        try:
            _check_inference(request)
            choice = choose(
                self.table.agents.values(),
                request.model,
                self.settings.heartbeat_timeout_s,
                cpu_limit=self.settings.degraded_cpu_percent,
            )
        except GenserveError as err:
            await abort(context, err)
        agent = choice.agent
        agent.reserve()
        self.total_jobs += 1
        token = self.issuer.issue(agent.agent_id, request.client_id, request.model)
        log.info(
            "job %s for %s (%s) -> agent %s (score %.3f)",
            token.jti,
            request.client_id,
            request.model,
            agent.agent_id,
            choice.score,
        )
        return pb.InferenceResponse(
            agent_endpoint=agent.endpoint,
            session_token=token.token,
            expires_at=token.expires_at,
            job_id=token.jti,
            estimated_rtt_ms=agent.rtt_ms,
            agent_id=agent.agent_id,
        )

    async def QuerySystemStatus(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemStatus:
        alive = self.table.alive()
        status = pb.SystemStatus(
            total_agents=len(alive),
            healthy_agents=sum(1 for a in alive if not a.degraded(self.settings.degraded_cpu_percent)),
        )
        if request.include_metrics:
            status.total_jobs = min(self.total_jobs, 2**31 - 1)
            status.uptime = _duration(time.monotonic() - self.started)
        if request.include_agents:
            for a in sorted(alive, key=lambda r: r.agent_id):
                free_vram = a.free_vram_mb if a.free_vram_mb is not None else a.total_vram_mb
                status.agents.add(
                    agent_id=a.agent_id,
                    status=a.status(self.settings.degraded_cpu_percent),
                    free_vram_mb=free_vram,
                    running_jobs=a.running_jobs,
                    last_heartbeat=a.last_heartbeat,
                )
        return status

    async def GetPublicKey(
        self, request: pb.PublicKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.PublicKeyResponse:
        return pb.PublicKeyResponse(
            public_key_pem=self.issuer.public_key_pem, algorithm=ALGORITHM, issuer=self.issuer.issuer
        )

    async def reap(self) -> None:
        """Drop agents past the heartbeat timeout (routing skips them even before this runs)."""
        period = min(1.0, self.settings.heartbeat_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            for agent_id in self.table.expire():
                log.warning(
                    "agent %s dropped: no health for %.0f s", agent_id, self.settings.heartbeat_timeout_s
                )


def _check_registration(reg: pb.AgentRegistration) -> None:
    if not reg.agent_id.strip():
        raise _invalid("agent_id", "is required")
    host, _, port = reg.endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _invalid("endpoint", f"{reg.endpoint!r} is not host:port")
    if reg.max_jobs <= 0:
        raise _invalid("max_jobs", f"must be at least 1 (got {reg.max_jobs})")
    if reg.total_ram_mb < 0 or reg.total_vram_mb < 0:
        raise _invalid("total_ram_mb" if reg.total_ram_mb < 0 else "total_vram_mb", "must not be negative")


def _check_inference(request: pb.InferenceRequest) -> None:
    for name in ("client_id", "model", "prompt"):
        if not getattr(request, name).strip():
            raise _invalid(name, "is required")
    if request.max_tokens < 0:
        raise _invalid("max_tokens", f"must not be negative (got {request.max_tokens})")
    if not math.isfinite(request.temperature) or request.temperature < 0:
        raise _invalid("temperature", f"must be 0 (the default, 0.7) or more (got {request.temperature})")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"


class Coordinator:
    """The running coordinator: its server, its servicer and the reaper task."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        key = load_or_create_key(settings.key_file)
        self.servicer = CoordinatorServicer(
            settings, TokenIssuer(key, settings.issuer, settings.token_lifetime_s)
        )
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> str:
        tls = TlsFiles(
            self.settings.tls_cert_file, self.settings.tls_key_file, self.settings.tls_client_ca_file
        )
        built = cluster_server(
            [SERVICE_NAME], self.settings.coordinator_host, self.settings.coordinator_port, tls, "coordinator"
        )
        self.server, self.port = built.server, built.ports[0]
        rpc.add_CoordinatorServiceServicer_to_server(self.servicer, self.server)
        await self.server.start()
        await built.mark_serving()
        self._reaper = asyncio.create_task(self.servicer.reap())
        return f"{self.settings.coordinator_host}:{self.port}"

    async def stop(self, grace: float = 2.0) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self.server is not None:
            await self.server.stop(grace)
