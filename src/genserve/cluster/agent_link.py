"""The agent's side of the coordinator: fetch the public key, register, keep ONE health stream.

Health goes over one long-lived stream (not a new stream per heartbeat, which costs a connection
setup each time); when the stream breaks or the coordinator answers "unknown_agent" (it
restarted), the agent fetches the key and registers again by itself, with exponential backoff
between failed tries; and a changed capability (a model now loaded, a new measured speed) is sent
by registering again, since the proto's HealthUpdate has no field for it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.api.grpc.gen import titancompute_pb2_grpc as rpc
from genserve.cluster.transport import channel_credentials, client_channel
from genserve.config.cluster import ClusterSettings

log = logging.getLogger("genserve.cluster.agent")


@dataclass
class LinkState:
    """What the agent's status and tests can see of the link."""

    registered: bool = False
    registrations: int = 0
    health_sent: int = 0
    rtt_ms: float = 0.0
    interval_s: float = 5.0


class CoordinatorLink:
    """Runs for the agent's life: register, stream health, and start over whenever that fails."""

    def __init__(
        self,
        settings: ClusterSettings,
        target: str,
        registration: Callable[[], pb.AgentRegistration],
        health: Callable[[], pb.HealthUpdate],
        on_key: Callable[[pb.PublicKeyResponse], None],
    ) -> None:
        self.settings = settings
        self.target = target
        self._registration = registration
        self._health = health
        self._on_key = on_key
        self.state = LinkState(interval_s=float(settings.heartbeat_interval_s))
        self._sent_caps: dict[str, str] | None = None
        self._credentials()  # a missing or bad TLS file stops the agent at start, not its link later

    def _credentials(self) -> grpc.ChannelCredentials | None:
        s = self.settings
        return channel_credentials(s.coordinator_ca_file, s.agent_tls_cert_file, s.agent_tls_key_file)

    async def run(self) -> None:
        backoff = self.settings.reconnect_initial_s
        while True:
            try:
                channel = client_channel(self.target, self._credentials())
            except OSError as exc:  # a TLS file gone or replaced by a bad one since the start
                log.warning("coordinator %s: %s; retrying in %.1f s", self.target, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.reconnect_max_s)
                continue
            try:
                stub = rpc.CoordinatorServiceStub(channel)
                while True:  # a new registration on the same channel after "unknown_agent"
                    await self._register(stub)
                    backoff = self.settings.reconnect_initial_s
                    await self._stream_health(stub)
            except grpc.aio.AioRpcError as exc:
                self.state.registered = False
                log.warning(
                    "coordinator %s: %s (%s); retrying in %.1f s",
                    self.target,
                    exc.code().name,
                    exc.details(),
                    backoff,
                )
            finally:
                await channel.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.reconnect_max_s)

    async def _register(self, stub: rpc.CoordinatorServiceStub) -> None:
        """Key first: once registered, clients get tokens for this agent, which it must verify."""
        self._on_key(await stub.GetPublicKey(pb.PublicKeyRequest(), timeout=10))
        registration = self._registration()
        answer = await stub.RegisterAgent(registration, timeout=10)
        self._sent_caps = dict(registration.capabilities)
        self.state.registered = True
        self.state.registrations += 1
        if answer.heartbeat_interval_seconds > 0:
            self.state.interval_s = float(answer.heartbeat_interval_seconds)
        log.info("registered with %s as %s: %s", self.target, registration.agent_id, answer.message)

    async def _stream_health(self, stub: rpc.CoordinatorServiceStub) -> None:
        """Returns when the coordinator no longer knows this agent; raises when the stream breaks."""
        sent_at: collections.deque[float] = collections.deque()

        async def updates() -> AsyncIterator[pb.HealthUpdate]:
            while True:
                registration = self._registration()
                if dict(registration.capabilities) != self._sent_caps:
                    answer = await stub.RegisterAgent(registration, timeout=10)
                    self._sent_caps = dict(registration.capabilities)
                    log.debug("capabilities sent again: %s", answer.message)
                update = self._health()
                update.rtt_ms = self.state.rtt_ms
                update.timestamp = int(time.time())
                sent_at.append(time.monotonic())
                self.state.health_sent += 1
                yield update
                await asyncio.sleep(self.state.interval_s)

        call = stub.ReportHealth(updates())
        try:
            async for ack in call:
                if sent_at:
                    self.state.rtt_ms = (time.monotonic() - sent_at.popleft()) * 1000
                if ack.status == "unknown_agent":
                    log.warning(
                        "coordinator %s does not know this agent (restarted?): registering again", self.target
                    )
                    self.state.registered = False
                    return
        finally:
            call.cancel()
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="the coordinator closed the health stream",
        )
