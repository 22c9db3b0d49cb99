"""Bad TLS files are named at start: a server or agent that cannot use its files says which ones."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from genserve.api.grpc.gen import titancompute_pb2 as pb
from genserve.cluster.agent_link import CoordinatorLink
from genserve.cluster.transport import TlsFiles, channel_credentials, server_credentials
from genserve.config.cluster import ClusterSettings
from tests.integration.cluster.pki import make_pki


def test_good_files_give_credentials(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    cert, key = pki.coordinator
    assert isinstance(server_credentials(TlsFiles(cert, key, pki.ca), ""), grpc.ServerCredentials)
    assert server_credentials(TlsFiles(), "") is None
    assert isinstance(channel_credentials(pki.ca, *pki.agent), grpc.ChannelCredentials)
    assert channel_credentials(None) is None


def test_bad_server_files_name_their_settings(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "garbage.pem").write_text("not a certificate")
    cert, key = pki.agent
    cases = [
        (TlsFiles(cert, pki.coordinator[1]), "agent_"),  # a key that is not the certificate's
        (TlsFiles(tmp_path / "garbage.pem", key), "agent_"),
        (TlsFiles(cert, key, tmp_path / "garbage.pem"), "agent_"),
    ]
    for files, prefix in cases:
        with pytest.raises(OSError) as info:
            server_credentials(files, prefix)
        assert "cluster.agent_tls_cert_file, agent_tls_key_file" in str(info.value)
    with pytest.raises(OSError, match=r"cannot read cluster\.tls_key_file"):
        server_credentials(TlsFiles(cert, tmp_path / "missing.key"), "")


def test_agent_link_refuses_bad_coordinator_files_before_it_starts(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "garbage.pem").write_text("not a CA")

    def link(**files: Path) -> CoordinatorLink:
        settings = ClusterSettings(**files)  # type: ignore[arg-type]
        return CoordinatorLink(settings, "127.0.0.1:1", pb.AgentRegistration, pb.HealthUpdate, print)

    with pytest.raises(OSError, match=r"cannot read cluster\.coordinator_ca_file"):
        link(coordinator_ca_file=tmp_path / "missing.pem")
    with pytest.raises(OSError, match=r"cluster\.coordinator_ca_file"):
        link(coordinator_ca_file=tmp_path / "garbage.pem")
    cert, _ = pki.agent
    with pytest.raises(OSError, match="agent_tls_key_file"):
        link(coordinator_ca_file=pki.ca, agent_tls_cert_file=cert, agent_tls_key_file=pki.client[1])
    assert link(coordinator_ca_file=pki.ca, agent_tls_cert_file=cert, agent_tls_key_file=pki.agent[1])
