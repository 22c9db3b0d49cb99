"""The agent fails closed without the coordinator's key, checks a stream fully before it uses the
token, and calls itself degraded by the coordinator's rule; the proto keeps the spec's names."""

from __future__ import annotations

from pathlib import Path

import pytest

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.app.runtime import Runtime
from genserve.cluster.agent import AgentServicer, _fields
from genserve.cluster.agent_link import LinkState
from genserve.cluster.agent_runner import open_used_tokens
from genserve.cluster.auth import ReplayGuard
from genserve.cluster.machine import MemoryFigures
from genserve.errors import ErrorCode, GenserveError


def servicer(runtime: Runtime, **cluster: object) -> AgentServicer:
    settings = runtime.settings.cluster.model_copy(update=cluster)
    return AgentServicer(settings, runtime, "agent-x", ReplayGuard())


def test_agent_without_a_key_refuses_every_token(runtime: Runtime) -> None:
    request = pb.StreamRequest(session_token="anything", model="tiny-chat", prompt="hi")
    with pytest.raises(GenserveError) as info:
        servicer(runtime)._authorise(request)
    assert info.value.code is ErrorCode.UNAUTHENTICATED and "public key" in info.value.message


def test_stream_request_defaults_and_checks() -> None:
    fields = _fields(pb.StreamRequest(model="m", prompt="p", temperature=0.7, options={"seed": "3"}))
    assert fields == {"model": "m", "prompt": "p", "max_tokens": 100, "temperature": 0.7, "seed": 3}
    # The spec's "Default: 0.7": unset (= 0 on the wire) is 0.7; greedy is asked for by option.
    assert _fields(pb.StreamRequest(model="m", prompt="p"))["temperature"] == 0.7
    greedy = _fields(pb.StreamRequest(model="m", prompt="p", options={"greedy": "true", "top_k": "5"}))
    assert greedy["temperature"] == 0.0 and "greedy" not in greedy and greedy["top_k"] == 5
    assert _fields(pb.StreamRequest(model="m", prompt="p", options={"greedy": "false"}))["temperature"] == 0.7
    for request, field in (
        (pb.StreamRequest(model="m"), "prompt"),
        (pb.StreamRequest(model="m", prompt="p", max_tokens=-2), "max_tokens"),
        (pb.StreamRequest(model="m", prompt="p", temperature=-0.5), "temperature"),
        (pb.StreamRequest(model="m", prompt="p", options={"bogus": "1"}), "bogus"),
        (pb.StreamRequest(model="m", prompt="p", options={"greedy": "sure"}), "greedy"),
        (pb.StreamRequest(model="m", prompt="p", temperature=1.0, options={"greedy": "true"}), "greedy"),
    ):
        with pytest.raises(GenserveError) as info:
            _fields(request)
        assert info.value.code is ErrorCode.INVALID_INPUT and field in info.value.message
    with pytest.raises(GenserveError) as info:
        _fields(pb.StreamRequest(model="m", prompt="p", options={"bogus": "1"}))
    assert "greedy" in info.value.message  # the accepted options are listed, greedy among them


def test_every_limit_of_text_generation_is_checked_before_the_token(runtime: Runtime) -> None:
    agent = servicer(runtime)
    ok = agent._request(pb.StreamRequest(model="tiny-chat", prompt="p", max_tokens=4096, temperature=2))
    assert ok.max_tokens == 4096 and ok.temperature == 2.0
    for request, field, code in (
        (
            pb.StreamRequest(model="tiny-chat", prompt="p", max_tokens=5000),
            "max_tokens",
            ErrorCode.INVALID_INPUT,
        ),
        (
            pb.StreamRequest(model="tiny-chat", prompt="p", temperature=5),
            "temperature",
            ErrorCode.INVALID_INPUT,
        ),
        (
            pb.StreamRequest(model="tiny-chat", prompt="p", options={"top_p": "2"}),
            "top_p",
            ErrorCode.INVALID_INPUT,
        ),
        (
            pb.StreamRequest(model="tiny-chat", prompt="p", options={"top_k": "-1"}),
            "top_k",
            ErrorCode.INVALID_INPUT,
        ),
        (pb.StreamRequest(model="no-such-llm", prompt="p"), "no-such-llm", ErrorCode.MODEL_NOT_FOUND),
    ):
        with pytest.raises(GenserveError) as info:
            agent._request(request)
        assert info.value.code is code and field in info.value.message, info.value.message


def test_agent_status_is_degraded_by_the_coordinators_cpu_rule(runtime: Runtime) -> None:
    roomy = MemoryFigures(total_ram_mb=32_000, free_ram_mb=16_000, total_vram_mb=0, free_vram_mb=0)
    agent = servicer(runtime, degraded_cpu_percent=90.0)
    assert agent.status_word(roomy) == "disconnected"
    agent.link = LinkState(registered=True)
    agent.cpu_percent = 50.0
    assert agent.status_word(roomy) == "healthy"
    agent.cpu_percent = 95.0  # the coordinator marks this degraded; so does the agent now
    assert agent.status_word(roomy) == "degraded"
    lenient = servicer(runtime, degraded_cpu_percent=100.0)
    lenient.link, lenient.cpu_percent = LinkState(registered=True), 95.0
    assert lenient.status_word(roomy) == "healthy"
    full = MemoryFigures(total_ram_mb=32_000, free_ram_mb=1_000, total_vram_mb=0, free_vram_mb=0)
    lenient.cpu_percent = 0.0
    assert lenient.status_word(full) == "degraded"


def test_idle_agent_counts_admitted_streams_once(runtime: Runtime) -> None:
    agent = servicer(runtime)
    assert agent.job_counts() == (0, 0)
    agent.active_sessions = 3  # admitted, none generating yet: all three wait
    assert agent.job_counts() == (0, 3)


def test_a_state_dir_the_agent_cannot_use_stops_it_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"cluster\.agent_state_dir"):
        open_used_tokens(blocker / "state")
    guard = open_used_tokens(tmp_path / "state")
    assert guard.claim("jti", expires_at=2e9) and (tmp_path / "state" / "used_tokens.sqlite3").is_file()


def test_proto_names_and_field_numbers_are_the_specs() -> None:
    assert pb.DESCRIPTOR.package == "titancompute.v1"
    services = {s.name: [m.name for m in s.methods] for s in pb.DESCRIPTOR.services_by_name.values()}
    assert services == {
        "CoordinatorService": [
            "RequestInference",
            "RegisterAgent",
            "ReportHealth",
            "QuerySystemStatus",
            "GetPublicKey",
        ],
        "AgentService": ["StreamInference", "GetStatus"],
    }
    fields = {f.name: f.number for f in pb.InferenceResponse.DESCRIPTOR.fields}
    assert fields == {
        "agent_endpoint": 1,
        "session_token": 2,
        "expires_at": 3,
        "job_id": 4,
        "estimated_rtt_ms": 5,
        "agent_id": 6,
    }
    health = {f.name: f.number for f in pb.HealthUpdate.DESCRIPTOR.fields}
    assert health["timestamp"] == 8 and health["rtt_ms"] == 7 and health["free_vram_mb"] == 2
    stream = {f.name: f.number for f in pb.StreamRequest.DESCRIPTOR.fields}
    assert stream == {
        "session_token": 1,
        "model": 2,
        "prompt": 3,
        "max_tokens": 4,
        "temperature": 5,
        "stream": 6,
        "options": 7,
    }
    method = pb.DESCRIPTOR.services_by_name["CoordinatorService"].methods_by_name["ReportHealth"]
    assert method.client_streaming and method.server_streaming
