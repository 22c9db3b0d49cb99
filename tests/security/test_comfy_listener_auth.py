"""API keys on ComfyUI's listener: every route and the frontend's files need a key; a browser
opens /?token=<key> once and keeps it as an HttpOnly, SameSite=Strict cookie (the redirect drops
it from the address); each key is its own user, never seeing another's settings or files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from genserve.auth.keys import KeyStore
from genserve.auth.principal import Scope
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root


@pytest.fixture(scope="module")
def keyed_comfy(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[tuple[LiveServer, str, str]]:
    root = tmp_path_factory.mktemp("comfy-auth")
    data = make_data_root(root / "data", demo_images)
    store = KeyStore(root / "auth" / "keys.json")
    first, second = store.add("one", {Scope.INFER})[1], store.add("two", {Scope.INFER})[1]
    settings = small_settings(demo_models, data, GENSERVE_AUTH__KEYS_FILE=str(store.path))
    with live_server(settings, data, comfy=True) as live:
        yield live, first, second


def test_every_path_needs_a_key(keyed_comfy: tuple[LiveServer, str, str]) -> None:
    live, key, _ = keyed_comfy
    with live.comfy_client() as client:
        for path in (
            "/",
            "/index.html",
            "/api/system_stats",
            "/queue",
            "/api/userdata?dir=workflows",
            "/templates/index.json",
        ):
            answer = client.get(path)
            assert answer.status_code == 401, path
            assert "?token=" in answer.json()["error_message"]
        assert client.get("/api/queue", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/?token=gsk_nope_nope").status_code == 401
        assert client.post("/api/prompt?token=" + key, json={}).status_code == 401  # only a GET sets it
    url = live.comfy_url.replace("http://", "ws://") + "/ws"  # type: ignore[union-attr]
    with pytest.raises(InvalidStatus):
        connect(url, open_timeout=10)


def test_token_in_the_url_becomes_an_httponly_cookie(keyed_comfy: tuple[LiveServer, str, str]) -> None:
    live, key, _ = keyed_comfy
    with live.comfy_client() as client:
        opened = client.get(f"/?token={key}&x=1")
        assert opened.status_code == 303 and opened.headers["location"] == "/?x=1"
        cookie = opened.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert client.get("/").status_code == 200  # the client kept the cookie
        assert client.get("/api/system_stats").status_code == 200
        token = client.cookies.get("genserve_token")
    url = live.comfy_url.replace("http://", "ws://") + "/ws?clientId=c1"  # type: ignore[union-attr]
    with connect(url, open_timeout=10, additional_headers={"Cookie": f"genserve_token={token}"}) as ws:
        assert '"status"' in ws.recv(10)


def test_each_key_is_its_own_user(keyed_comfy: tuple[LiveServer, str, str]) -> None:
    live, first, second = keyed_comfy
    with live.comfy_client() as client:
        one, two = {"Authorization": f"Bearer {first}"}, {"Authorization": f"Bearer {second}"}
        assert client.post("/api/settings", json={"x": 1}, headers=one).status_code == 200
        assert client.post("/api/userdata/workflows%2Fa.json", content=b"{}", headers=one).status_code == 200
        assert client.get("/api/settings/x", headers=two).json() is None
        assert client.get("/api/userdata?dir=workflows", headers=two).json() == []
        # The Comfy-User header names no other user once keys exist.
        spoof = {**two, "Comfy-User": "default"}
        assert client.get("/api/userdata/workflows%2Fa.json", headers=spoof).status_code == 404
        assert client.get("/api/userdata?dir=workflows", headers=one).json() == ["a.json"]
        assert client.post("/api/users", json={"username": "x"}, headers=one).status_code == 400


def test_an_exposed_listener_needs_keys(demo_models: Path, tmp_path: Path) -> None:
    from genserve.app.server import check_access
    from genserve.errors import GenserveError

    settings = small_settings(demo_models, tmp_path, GENSERVE_COMFY__HOST="0.0.0.0")
    with pytest.raises(GenserveError, match=r"comfy\.host"):
        check_access(settings)
    check_access(
        small_settings(
            demo_models, tmp_path, GENSERVE_COMFY__HOST="0.0.0.0", GENSERVE_AUTH__ALLOW_ANONYMOUS="true"
        )
    )
