"""API keys on every network door: REST, WebSocket (header or ?token=) and gRPC, with the infer
and admin scopes; keys added or revoked on a running server; start-up refused beyond loopback
without keys; TLS on the main REST and gRPC listeners."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from genserve.api.grpc.gen import image_generation_pb2 as ig
from genserve.api.grpc.gen import image_generation_pb2_grpc as ig_grpc
from genserve.auth.exposure import check_exposure, is_loopback
from genserve.auth.keys import KeyStore
from genserve.auth.principal import Scope
from genserve.errors import GenserveError
from tests.conftest import small_env, small_settings
from tests.integration.cluster.pki import make_pki
from tests.integration.conftest import LiveServer, live_server, make_data_root


class Keys:
    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.admin = store.add("ops", {Scope.ADMIN})[1]
        self.infer = store.add("app", {Scope.INFER})[1]


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[tuple[LiveServer, Keys]]:
    root = tmp_path_factory.mktemp("auth")
    data = make_data_root(root / "data", demo_images)
    keys = Keys(KeyStore(root / "auth" / "keys.json"))
    settings = small_settings(demo_models, data, GENSERVE_AUTH__KEYS_FILE=str(keys.store.path))
    with live_server(settings, data, grpc=True) as live:
        yield live, keys


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_rest_needs_a_valid_key_except_for_health(keyed: tuple[LiveServer, Keys]) -> None:
    live, keys = keyed
    with live.client() as client:
        assert client.get("/health/live").status_code == 200
        for headers in ({}, bearer("gsk_nope_nope"), {"Authorization": keys.admin}, bearer(keys.admin + "x")):
            answer = client.get("/api/v1/models", headers=headers)
            assert answer.status_code == 401, headers
            assert answer.json()["error_code"] == "UNAUTHENTICATED"
            assert answer.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/v1/models", headers=bearer(keys.infer)).status_code == 200
        assert client.get("/v1/models", headers=bearer(keys.infer)).status_code == 200


def test_admin_routes_need_the_admin_scope(keyed: tuple[LiveServer, Keys]) -> None:
    live, keys = keyed
    with live.client() as client:
        path = "/api/v1/models/vae/demo_vae/unload"
        refused = client.post(path, headers=bearer(keys.infer))
        assert refused.status_code == 403
        assert refused.json()["error_code"] == "PERMISSION_DENIED"
        assert "admin" in refused.json()["error_message"]
        assert client.post(path, headers=bearer(keys.admin)).status_code in (200, 404)


def test_a_key_added_or_revoked_takes_effect_on_the_running_server(keyed: tuple[LiveServer, Keys]) -> None:
    live, keys = keyed
    _, token = keys.store.add("late", {Scope.INFER})
    with live.client() as client:
        assert client.get("/api/v1/models", headers=bearer(token)).status_code == 200
        keys.store.revoke("late")
        assert client.get("/api/v1/models", headers=bearer(token)).status_code == 401


def test_websockets_take_the_key_as_a_header_or_a_query_token(keyed: tuple[LiveServer, Keys]) -> None:
    live, keys = keyed
    url = live.url.replace("http://", "ws://") + "/comfy/ws?clientId=auth-test"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10)
    assert refused.value.response.status_code == 403
    with connect(url + f"&token={keys.infer}", open_timeout=10) as ws:
        assert ws.recv(timeout=10)
    with connect(url, additional_headers=bearer(keys.infer), open_timeout=10) as ws:
        assert ws.recv(timeout=10)


def test_grpc_checks_the_same_keys_and_scopes(keyed: tuple[LiveServer, Keys]) -> None:
    live, keys = keyed
    with grpc.insecure_channel(live.grpc_target) as channel:
        stub = ig_grpc.ImageGenerationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.Echo(ig.EchoRequest(), timeout=10)
        assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
        reply = stub.Echo(ig.EchoRequest(), metadata=[("authorization", f"Bearer {keys.infer}")])
        assert reply is not None
        chunks = iter([ig.UploadFileRequest()])
        with pytest.raises(grpc.RpcError) as denied:
            stub.UploadFile(chunks, metadata=[("authorization", f"Bearer {keys.infer}")], timeout=10)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no key


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_exposed_server_needs_keys_or_an_explicit_opt_in() -> None:
    with pytest.raises(GenserveError, match=r"grpc.host=0.0.0.0 listens beyond loopback"):
        check_exposure({"server.host": "127.0.0.1", "grpc.host": "0.0.0.0"}, False, False)
    check_exposure({"server.host": "0.0.0.0"}, True, False)
    check_exposure({"server.host": "0.0.0.0"}, False, True)


def test_genserve_serve_on_every_interface_without_keys_stops_at_start(
    tmp_path: Path, demo_models: Path, data_root: Path
) -> None:
    env = {
        **os.environ,
        **small_env(demo_models, data_root),
        "GENSERVE_AUTH__KEYS_FILE": str(tmp_path / "k.json"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "genserve.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "server.host=0.0.0.0 listens beyond loopback and no API key exists" in done.stderr
    assert "genserve keys add" in done.stderr


def test_tls_on_the_rest_and_grpc_listeners(tmp_path: Path, demo_models: Path, demo_images: Path) -> None:
    pki = make_pki(tmp_path)
    cert, key = pki.coordinator
    data = make_data_root(tmp_path / "data", demo_images)
    tls = {"GENSERVE_SERVER__TLS_CERT_FILE": str(cert), "GENSERVE_SERVER__TLS_KEY_FILE": str(key)}
    tls |= {"GENSERVE_GRPC__TLS_CERT_FILE": str(cert), "GENSERVE_GRPC__TLS_KEY_FILE": str(key)}
    with live_server(small_settings(demo_models, data, **tls), data, grpc=True) as live:
        assert live.url.startswith("https://")
        with httpx.Client(base_url=live.url, verify=str(pki.ca), timeout=30) as client:
            assert client.get("/health/live").status_code == 200
        with (
            pytest.raises(httpx.HTTPError),
            httpx.Client(base_url=live.url.replace("https", "http")) as plain,
        ):
            plain.get("/health/live", timeout=10)
        with grpc.secure_channel(live.grpc_target, pki.credentials()) as channel:
            reply = ig_grpc.ImageGenerationServiceStub(channel).Echo(ig.EchoRequest(), timeout=30)
            assert reply is not None
