"""``cluster.preload``: an agent loads its LLMs before registering, and a wrong name stops it at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genserve.api.grpc.gen import titancompute_pb2 as pb
from tests.integration.cluster.support import (
    MODEL,
    agent_stub,
    coordinator_stub,
    processes,
    start_agent,
    start_coordinator,
    status,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_preloaded_model_is_loaded_before_any_stream(tmp_path: Path, demo_models: Path) -> None:
    coordinator = start_coordinator(tmp_path)
    address = coordinator.wait_ready().group(1)
    agent = start_agent(
        tmp_path, address, "agent-p", demo_models, GENSERVE_CLUSTER__PRELOAD=json.dumps([MODEL])
    )
    with processes(coordinator, agent):
        endpoint = agent.wait_ready().group(2)
        wait_until(lambda: "agent-p" in status(coordinator_stub(address)), 20, "agent-p registered")
        answer = agent_stub(endpoint).GetStatus(pb.AgentStatusRequest(), timeout=10)
        assert answer.model_loaded == MODEL and answer.total_requests_processed == 0
        assert f"preloaded llm/{MODEL}" in agent.log


def test_unknown_preload_name_stops_the_agent_naming_it(tmp_path: Path, demo_models: Path) -> None:
    agent = start_agent(
        tmp_path, "127.0.0.1:9", "agent-x", demo_models, GENSERVE_CLUSTER__PRELOAD='["no-such-llm"]'
    )
    with processes(agent):
        assert agent.process.wait(120) != 0
    assert "no-such-llm" in agent.log and "cluster.preload" in agent.log
    assert "serving on" not in agent.log
