"""The agent fails closed without the coordinator's key; the proto keeps the spec's names and numbers."""

from __future__ import annotations

import pytest

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.cluster.agent import AgentServicer, _fields
from genserve.errors import ErrorCode, GenserveError
from genserve.runtime import Runtime


def test_agent_without_a_key_refuses_every_token(runtime: Runtime) -> None:
    servicer = AgentServicer(runtime.settings.cluster, runtime, "agent-x")
    request = pb.StreamRequest(session_token="anything", model="tiny-chat", prompt="hi")
    with pytest.raises(GenserveError) as info:
        servicer._authorise(request)
    assert info.value.code is ErrorCode.UNAUTHENTICATED and "public key" in info.value.message


def test_stream_request_defaults_and_checks() -> None:
    fields = _fields(pb.StreamRequest(model="m", prompt="p", temperature=0.7, options={"seed": "3"}))
    assert fields == {"model": "m", "prompt": "p", "max_tokens": 100, "temperature": 0.7, "seed": 3}
    assert _fields(pb.StreamRequest(model="m", prompt="p"))["temperature"] == 0.0  # unset = 0 = greedy
    for request, field in (
        (pb.StreamRequest(model="m"), "prompt"),
        (pb.StreamRequest(model="m", prompt="p", max_tokens=-2), "max_tokens"),
        (pb.StreamRequest(model="m", prompt="p", temperature=-0.5), "temperature"),
        (pb.StreamRequest(model="m", prompt="p", options={"bogus": "1"}), "bogus"),
    ):
        with pytest.raises(GenserveError) as info:
            _fields(request)
        assert info.value.code is ErrorCode.INVALID_INPUT and field in info.value.message


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
