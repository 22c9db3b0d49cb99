"""TLS and mutual TLS between real cluster processes, and an agent's max_jobs limit.

The certificates (pki.py) are valid for DNS localhost and IP 127.0.0.1: the processes listen on
and advertise 127.0.0.1, so clients reach them by an address their certificates name.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.api.grpc.gen import titancompute_pb2_grpc as rpc
from tests.integration.cluster.pki import Pki, make_pki
from tests.integration.cluster.support import (
    MODEL,
    Reader,
    agent_key_token,
    agent_stub,
    ask,
    coordinator_stub,
    long_request,
    processes,
    start_agent,
    start_coordinator,
    status,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def _coordinator_env(pki: Pki, mutual: bool) -> dict[str, str]:
    cert, key = pki.coordinator
    env = {"GENSERVE_CLUSTER__TLS_CERT_FILE": str(cert), "GENSERVE_CLUSTER__TLS_KEY_FILE": str(key)}
    if mutual:
        env["GENSERVE_CLUSTER__TLS_CLIENT_CA_FILE"] = str(pki.ca)
    return env


def _agent_env(pki: Pki, **extra: str) -> dict[str, str]:
    cert, key = pki.agent
    return {
        "GENSERVE_CLUSTER__COORDINATOR_CA_FILE": str(pki.ca),
        "GENSERVE_CLUSTER__AGENT_TLS_CERT_FILE": str(cert),
        "GENSERVE_CLUSTER__AGENT_TLS_KEY_FILE": str(key),
        **extra,
    }


def _refused(call: object, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> str:
    """The details of the RpcError that ``call()`` raises, after checking its code."""
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def _stream_request(token: str, max_tokens: int) -> pb.StreamRequest:
    return pb.StreamRequest(
        session_token=token,
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=max_tokens,
        stream=True,
        options={"greedy": "true"},  # deterministic: no EOS by chance before max_tokens
    )


def test_tls_coordinator_and_agent_serve_tls_clients_and_refuse_plaintext(
    tmp_path: Path, pki: Pki, demo_models: Path
) -> None:
    coordinator = start_coordinator(tmp_path, **_coordinator_env(pki, mutual=False))
    address = coordinator.wait_ready().group(1)
    assert "(TLS)" in coordinator.log
    agent = start_agent(tmp_path, address, "agent-tls", demo_models, **_agent_env(pki))
    with processes(coordinator, agent):
        endpoint = agent.wait_ready().group(2)
        with grpc.secure_channel(address, pki.credentials()) as channel:
            stub = rpc.CoordinatorServiceStub(channel)
            wait_until(lambda: "agent-tls" in status(stub), 20, f"agent registered over TLS:\n{agent.log}")
            route = ask(stub)
        assert route.agent_id == "agent-tls" and route.agent_endpoint == endpoint
        with grpc.secure_channel(route.agent_endpoint, pki.credentials()) as channel:
            replies = list(
                rpc.AgentServiceStub(channel).StreamInference(
                    _stream_request(route.session_token, 4), timeout=60
                )
            )
        *pieces, last = replies
        assert pieces and last.done and last.metadata["completion_tokens"] == "4"
        assert "".join(p.token for p in pieces) == last.content
        # Plaintext clients get no answer from either TLS server.
        _refused(lambda: status(coordinator_stub(address)))
        _refused(lambda: agent_stub(endpoint).GetStatus(pb.AgentStatusRequest(), timeout=10))
        # A client that trusts another CA does not accept the coordinator's certificate.
        (tmp_path / "other").mkdir()
        other = make_pki(tmp_path / "other")
        with grpc.secure_channel(address, other.credentials()) as channel:
            _refused(lambda: status(rpc.CoordinatorServiceStub(channel)))


def test_mutual_tls_refuses_clients_without_a_certificate_but_not_the_agent(
    tmp_path: Path, pki: Pki, demo_models: Path
) -> None:
    coordinator = start_coordinator(tmp_path, **_coordinator_env(pki, mutual=True))
    address = coordinator.wait_ready().group(1)
    agent = start_agent(tmp_path, address, "agent-mtls", demo_models, **_agent_env(pki))
    with processes(coordinator, agent):
        agent.wait_ready()
        with grpc.secure_channel(address, pki.credentials(client_cert=True)) as channel:
            stub = rpc.CoordinatorServiceStub(channel)
            wait_until(lambda: "agent-mtls" in status(stub), 20, f"agent registered over mTLS:\n{agent.log}")
            assert ask(stub).agent_id == "agent-mtls"
        with grpc.secure_channel(address, pki.credentials(client_cert=False)) as channel:
            _refused(lambda: status(rpc.CoordinatorServiceStub(channel)))


def test_agent_refuses_a_stream_beyond_max_jobs_without_using_up_the_token(
    tmp_path: Path, demo_models: Path
) -> None:
    coordinator = start_coordinator(tmp_path)
    address = coordinator.wait_ready().group(1)
    agent = start_agent(tmp_path, address, "agent-one", demo_models, GENSERVE_CLUSTER__MAX_JOBS="1")
    with processes(coordinator, agent):
        endpoint = agent.wait_ready().group(2)
        stub = coordinator_stub(address)
        wait_until(lambda: "agent-one" in status(stub), 20, "agent registered")
        first = ask(stub, wait_s=0)
        assert first.agent_id == "agent-one"
        details = _refused(lambda: ask(stub, wait_s=0))  # the first job holds the only slot
        assert "at max_jobs" in details
        # The coordinator routes no second job to a full agent; a client holding a token anyway
        # (signed with the coordinator's key, as one routed just before a health update) is
        # refused by the agent itself.
        second_token = agent_key_token(tmp_path / "coordinator_key.pem", "agent-one")
        agent_rpc = agent_stub(endpoint)
        running = Reader(agent_rpc.StreamInference(long_request(first.session_token), timeout=60))
        got = running.items.get(timeout=30)
        assert isinstance(got, pb.StreamResponse) and not got.done, got  # the first stream is running
        details = _refused(
            lambda: list(agent_rpc.StreamInference(_stream_request(second_token, 2), timeout=10)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert "max_jobs (1)" in details
        running.cancel()
        wait_until(
            lambda: agent_rpc.GetStatus(pb.AgentStatusRequest(), timeout=10).active_sessions == 0,
            10,
            "the cancelled stream to end",
        )
        # The refused request did not use up its token: sent again, it streams.
        replies = list(agent_rpc.StreamInference(_stream_request(second_token, 2), timeout=30))
        assert replies[-1].done and replies[-1].metadata["completion_tokens"] == "2"
