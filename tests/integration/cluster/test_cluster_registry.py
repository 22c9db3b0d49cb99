"""The coordinator's agent table against hand-made agents (no agent process): an agent id cannot
be taken from a live agent, a health stream reports only for the registration it was opened for,
and a burst of requests never goes past an agent's max_jobs."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import grpc
import pytest

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.api.grpc.gen import titancompute_pb2_grpc as rpc
from tests.integration.cluster.support import (
    MODEL,
    ask,
    coordinator_stub,
    processes,
    start_coordinator,
    status,
    wait_until,
)

pytestmark = pytest.mark.slow
TIMEOUT_S = 3  # the heartbeat timeout support.start_coordinator sets


class HealthStream:
    """One ReportHealth stream the test drives by hand: each ``send`` returns its ack."""

    def __init__(self, stub: rpc.CoordinatorServiceStub) -> None:
        self.updates: queue.Queue[pb.HealthUpdate | None] = queue.Queue()
        self.acks = stub.ReportHealth(iter(self.updates.get, None))

    def send(self, agent_id: str, **figures: int) -> pb.HealthAck:
        self.updates.put(pb.HealthUpdate(agent_id=agent_id, timestamp=int(time.time()), **figures))  # type: ignore[arg-type]
        return next(self.acks)

    def close(self) -> None:
        self.updates.put(None)
        self.acks.cancel()


def register(stub: rpc.CoordinatorServiceStub, agent_id: str, endpoint: str, max_jobs: int = 4) -> str:
    registration = pb.AgentRegistration(
        agent_id=agent_id,
        endpoint=endpoint,
        total_ram_mb=32_000,
        max_jobs=max_jobs,
        supported_models=[MODEL],
    )
    return stub.RegisterAgent(registration, timeout=10).message


def takes(stub: rpc.CoordinatorServiceStub, agent_id: str, endpoint: str) -> bool:
    """Registers ``agent_id`` from ``endpoint``; False while another endpoint still holds it."""
    try:
        register(stub, agent_id, endpoint)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
            raise
        time.sleep(0.2)
        return False
    return True


def refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def test_a_live_agent_id_cannot_be_taken_from_another_endpoint(tmp_path: Path) -> None:
    coordinator = start_coordinator(tmp_path)
    with processes(coordinator):
        stub = coordinator_stub(coordinator.wait_ready().group(1))
        register(stub, "victim", "127.0.0.1:1111")
        health = HealthStream(stub)
        assert health.send("victim", free_ram_mb=16_000).status == "ok"
        details = refused(lambda: register(stub, "victim", "127.0.0.1:6666"), grpc.StatusCode.ALREADY_EXISTS)
        assert "victim" in details and "127.0.0.1:1111" in details
        # The same endpoint registering again (a restart, new capabilities) is accepted.
        assert "re-registered" in register(stub, "victim", "127.0.0.1:1111")
        assert ask(stub, wait_s=0).agent_endpoint == "127.0.0.1:1111"
        assert health.send("victim", free_ram_mb=16_000).status == "ok"
        # Without a health stream, a registration within the heartbeat timeout holds the id too.
        register(stub, "quiet", "127.0.0.1:2222")
        refused(lambda: register(stub, "quiet", "127.0.0.1:7777"), grpc.StatusCode.ALREADY_EXISTS)

        # Once silent for the timeout (and dropped), the id is free for another endpoint; the
        # victim, reporting meanwhile, still holds its own.
        def quiet_taken() -> bool:
            assert health.send("victim", free_ram_mb=16_000).status == "ok"
            return takes(stub, "quiet", "127.0.0.1:7777")

        wait_until(quiet_taken, TIMEOUT_S + 3, "quiet's id free")
        refused(lambda: register(stub, "victim", "127.0.0.1:6666"), grpc.StatusCode.ALREADY_EXISTS)
        health.close()


def test_a_health_stream_never_keeps_alive_another_endpoints_registration(tmp_path: Path) -> None:
    coordinator = start_coordinator(tmp_path)
    with processes(coordinator):
        stub = coordinator_stub(coordinator.wait_ready().group(1))
        register(stub, "agent-h", "127.0.0.1:1111")
        old = HealthStream(stub)
        assert old.send("agent-h").status == "ok"
        # The stream goes silent: the record is dropped after the timeout, and the id is free.
        wait_until(lambda: takes(stub, "agent-h", "127.0.0.1:2222"), TIMEOUT_S + 3, "agent-h dropped")
        ack = old.send("agent-h")
        assert ack.status == "unknown_agent" and "127.0.0.1:2222" in ack.message
        # The old stream keeps reporting, yet the new registration (no health of its own) is
        # dropped after the timeout: the old stream refreshes nothing of it.
        started = time.monotonic()
        while "agent-h" in status(stub):
            assert time.monotonic() - started < TIMEOUT_S + 3, "the old stream kept the new record alive"
            assert old.send("agent-h").status == "unknown_agent"
            time.sleep(0.3)
        old.close()


def test_a_burst_never_goes_past_max_jobs(tmp_path: Path) -> None:
    coordinator = start_coordinator(tmp_path)
    with processes(coordinator):
        stub = coordinator_stub(coordinator.wait_ready().group(1))
        register(stub, "solo", "127.0.0.1:3333", max_jobs=1)
        health = HealthStream(stub)
        assert health.send("solo", free_ram_mb=16_000).status == "ok"
        assert ask(stub, wait_s=0).agent_id == "solo"
        for _ in range(3):  # routed before any health update: the one slot is taken
            details = refused(lambda: ask(stub, wait_s=0), grpc.StatusCode.UNAVAILABLE)
            assert "at max_jobs" in details
        # Another agent with room gets the next job.
        register(stub, "spare", "127.0.0.1:4444", max_jobs=1)
        assert ask(stub, wait_s=0).agent_id == "spare"
        # An update past the grace says the job is over (or holds it): the slot is free again.
        time.sleep(0.6)
        assert health.send("solo", free_ram_mb=16_000).status == "ok"
        assert ask(stub, wait_s=0).agent_id == "solo"
        health.close()
