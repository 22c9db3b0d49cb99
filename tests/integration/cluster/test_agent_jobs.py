"""A real agent's job counts and its used tokens: what it reports while streams wait for its
engine, and that a token it served stays used across a restart of the agent."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest

from genserve.api.grpc.gen import titancompute_pb2 as pb
from tests.integration.cluster.support import (
    Reader,
    agent_stub,
    ask,
    coordinator_stub,
    long_request,
    processes,
    start_agent,
    start_coordinator,
    status,
    stream,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_a_stream_waiting_for_the_engine_is_counted_once(tmp_path: Path, demo_models: Path) -> None:
    """max_jobs 3 over one engine worker, two streams open: one generates, one waits. The agent
    reports 1 running + 1 queued, so the coordinator still routes a third job to it (counting the
    waiting stream twice made it 2 + 1 = max_jobs, and the job was refused)."""
    coordinator = start_coordinator(tmp_path)
    address = coordinator.wait_ready().group(1)
    agent = start_agent(
        tmp_path,
        address,
        "agent-q",
        demo_models,
        GENSERVE_CLUSTER__MAX_JOBS="3",
        GENSERVE_ENGINE__WORKERS_PER_DEVICE="1",
    )
    with processes(coordinator, agent):
        endpoint = agent.wait_ready().group(2)
        stub = coordinator_stub(address)
        wait_until(lambda: "agent-q" in status(stub), 20, "agent-q registered")
        routes = [ask(stub, wait_s=0) for _ in range(2)]
        streams = [
            Reader(agent_stub(endpoint).StreamInference(long_request(r.session_token))) for r in routes
        ]
        try:
            agent_rpc = agent_stub(endpoint)
            wait_until(
                lambda: agent_rpc.GetStatus(pb.AgentStatusRequest(), timeout=10).active_sessions == 2,
                10,
                "both streams admitted",
            )
            # One of them generates (whichever the engine took first); the other waits behind it.
            wait_until(lambda: any(not r.items.empty() for r in streams), 30, "a stream generating")
            assert all(r.items.empty() or isinstance(r.items.queue[0], pb.StreamResponse) for r in streams)
            opened = time.time()
            # A health update sent a second after both were open (the routed jobs' grace is over)...
            wait_until(lambda: status(stub)["agent-q"].last_heartbeat > opened + 1, 10, "a fresh update")
            # ...while both were still open (no stream opens after them, so the count only falls).
            assert agent_rpc.GetStatus(pb.AgentStatusRequest(), timeout=10).active_sessions == 2
            assert status(stub)["agent-q"].running_jobs == 1  # the other one waits: queued, not running
            third = ask(stub, wait_s=0)
            assert third.agent_id == "agent-q"
        finally:
            for reader in streams:
                reader.cancel()


def test_a_used_token_stays_used_after_the_agent_restarts(tmp_path: Path, demo_models: Path) -> None:
    coordinator = start_coordinator(tmp_path)
    address = coordinator.wait_ready().group(1)
    agent = start_agent(tmp_path, address, "agent-r", demo_models)
    started = [coordinator, agent]
    with processes(*started):
        endpoint = agent.wait_ready().group(2)
        stub = coordinator_stub(address)
        wait_until(lambda: "agent-r" in status(stub), 20, "agent-r registered")
        used, unused = ask(stub), ask(stub)
        assert stream(endpoint, used.session_token, max_tokens=2)[-1].done
        assert (tmp_path / "agent-state" / "agent-r" / "used_tokens.sqlite3").is_file()

        # Killed outright and started again on the same endpoint, well within the tokens' lifetime.
        agent.stop(signal.SIGKILL)
        port = int(endpoint.rsplit(":", 1)[1])
        restarted = start_agent(tmp_path, address, "agent-r", demo_models, port=port)
        started.append(restarted)
        assert restarted.wait_ready().group(2) == endpoint
        restarted_rpc = agent_stub(endpoint)
        wait_until(
            lambda: restarted_rpc.GetStatus(pb.AgentStatusRequest(), timeout=10).status != "disconnected",
            20,
            f"agent-r registered again:\n{restarted.log}",
        )
        with pytest.raises(grpc.RpcError) as info:
            stream(endpoint, used.session_token, max_tokens=2)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "already used" in info.value.details()
        # A token issued before the restart and never used is still good: nothing refuses by age.
        assert stream(endpoint, unused.session_token, max_tokens=2)[-1].done
