"""Failures a cluster must ride out, with real processes: an agent killed, a coordinator restarted."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import pytest

from genserve.api.grpc.gen import titancompute_pb2 as pb
from tests.integration.cluster.support import (
    ask,
    coordinator_stub,
    processes,
    start_agent,
    start_coordinator,
    status,
    stream,
    wait_until,
)

pytestmark = pytest.mark.slow
TIMEOUT_S = 3  # the heartbeat timeout support.start_coordinator sets


def test_killed_agent_is_dropped_and_a_restarted_coordinator_keeps_agents_and_tokens(
    tmp_path: Path, demo_models: Path
) -> None:
    coordinator = start_coordinator(tmp_path)
    address = coordinator.wait_ready().group(1)
    port = int(address.rsplit(":", 1)[1])
    a = start_agent(tmp_path, address, "agent-a", demo_models)
    b = start_agent(tmp_path, address, "agent-b", demo_models)
    started = [coordinator, a, b]
    with processes(*started):
        a.wait_ready(), b.wait_ready()
        stub = coordinator_stub(address)
        wait_until(lambda: set(status(stub)) == {"agent-a", "agent-b"}, 20, "both agents registered")
        key_file = tmp_path / "coordinator_key.pem"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

        # An agent killed outright (no goodbye) is dropped within the heartbeat timeout, not routed to.
        b.stop(signal.SIGKILL)
        took = wait_until(lambda: "agent-b" not in status(stub), TIMEOUT_S + 3, "agent-b dropped")
        assert took <= TIMEOUT_S + 2
        assert {ask(stub).agent_id for _ in range(6)} == {"agent-a"}  # (waiting for room past 4)

        # A token issued before the coordinator restarts is still good afterwards (same key file).
        before = ask(stub)
        key_before = stub.GetPublicKey(pb.PublicKeyRequest(), timeout=10).public_key_pem
        coordinator.stop(signal.SIGTERM)
        assert coordinator.process.returncode == 0, coordinator.log
        restarted = start_coordinator(tmp_path, port=port)
        started.append(restarted)
        assert restarted.wait_ready().group(1) == address
        assert stub.GetPublicKey(pb.PublicKeyRequest(), timeout=10).public_key_pem == key_before
        # The agent notices (stream broken or "unknown_agent") and registers again by itself.
        wait_until(lambda: "agent-a" in status(stub), 15, "agent-a registered again")
        replies = stream(
            before.agent_endpoint, before.session_token, max_tokens=3, options={"greedy": "true"}
        )
        assert replies[-1].done and replies[-1].metadata["completion_tokens"] == "3"
        after = ask(stub)
        assert after.agent_id == "agent-a" and stream(after.agent_endpoint, after.session_token, max_tokens=2)
        assert "agent agent-a registered at" in restarted.log  # a fresh table: registered, not re-registered
