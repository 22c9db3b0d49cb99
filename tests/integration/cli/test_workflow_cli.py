"""``genserve workflow list|info|run`` as a user runs it: a real process against a live server.

The server is the module's ``server`` fixture (tests/integration/conftest.py) on the demo models;
the input keys come from its ``GET /workflow-info``, which is the truth, rather than being
hard-coded. A few checks of the client's own parts (multipart parsing, safe saving) need no server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from genserve.cli.workflow import Part, convert, parse_multipart, save_part
from tests.integration.conftest import LiveServer

GENSERVE = str(Path(sys.executable).with_name("genserve"))
DEMO_ALIASES = {"text-to-image", "image-edit", "image-to-image"}


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``genserve workflow ARGS`` in a clean environment, wide enough that tables do not wrap."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    return subprocess.run(
        [GENSERVE, "workflow", *args],
        capture_output=True,
        text=True,
        env={**base, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        timeout=280,
    )


def inputs(client: httpx.Client, alias: str) -> dict[str, dict[str, Any]]:
    response = client.get("/workflow-info", params={"workflow": alias})
    assert response.status_code == 200, response.text
    return response.json()


def int_key(info: dict[str, dict[str, Any]]) -> str:
    """The seed input if exposed, else any int input."""
    keys = sorted(info, key=lambda k: not k.endswith("/seed"))
    found = [k for k in keys if info[k]["type"] == "int"]
    assert found, f"no int input exposed: {info}"
    return found[0]


def image_key(info: dict[str, dict[str, Any]]) -> str:
    found = [k for k, v in info.items() if v["class"] == "LoadImage"]
    assert found, f"no LoadImage input exposed: {info}"
    return found[0]


def assert_pngs(paths: list[str], folder: Path) -> None:
    assert paths, "no result saved"
    for path in paths:
        assert Path(path).resolve().parent == folder.resolve()
        with Image.open(path) as image:
            image.load()
            assert image.format == "PNG"


def test_list_prints_the_demo_aliases(server: LiveServer) -> None:
    done = cli("list", env={"GENSERVE_URL": server.url})  # the env var stands for --url
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) >= DEMO_ALIASES


def test_info_shows_every_input(server: LiveServer, client: httpx.Client) -> None:
    info = inputs(client, "text-to-image")
    done = cli("info", "text-to-image", "--url", server.url)
    assert done.returncode == 0, done.stderr
    for key, spec in info.items():
        assert key in done.stdout
        assert spec["class"] in done.stdout
    as_json = cli("info", "text-to-image", "--url", server.url, "--json")
    assert json.loads(as_json.stdout) == info


def test_run_text_to_image_saves_a_png(server: LiveServer, client: httpx.Client, tmp_path: Path) -> None:
    seed = int_key(inputs(client, "text-to-image"))
    out = tmp_path / "results"
    done = cli("run", "text-to-image", f"{seed}=7", "--output", str(out), "--json", "--url", server.url)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "closed", report
    assert report["queued"].startswith("queued / "), report
    assert report["inputs"] == {seed: 7}
    assert_pngs(report["paths"], out)


def test_run_image_to_image_uploads_the_local_file(
    server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    key = image_key(inputs(client, "image-to-image"))
    local = tmp_path / "my photo.png"
    Image.new("RGB", (48, 40), (200, 30, 60)).save(local)
    out = tmp_path / "out"
    done = cli("run", "image-to-image", f"{key}=@{local}", "-o", str(out), "--url", server.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "uploaded" in done.stderr and str(local) in done.stderr
    assert_pngs(done.stdout.split(), out)  # without --json: one saved path per line


def test_bad_arguments_exit_2_naming_the_key(server: LiveServer, client: httpx.Client) -> None:
    info = inputs(client, "text-to-image")
    seed = int_key(info)
    bad_key = cli("run", "text-to-image", "nope/key=1", "--url", server.url)
    assert bad_key.returncode == 2
    assert "nope/key" in bad_key.stderr and seed in bad_key.stderr  # the valid keys are listed
    bad_int = cli("run", "text-to-image", f"{seed}=seven", "--url", server.url)
    assert bad_int.returncode == 2
    assert seed in bad_int.stderr and "seven" in bad_int.stderr
    image = image_key(inputs(client, "image-to-image"))
    missing = cli("run", "image-to-image", f"{image}=@no-such-file.png", "--url", server.url)
    assert missing.returncode == 2
    assert "no-such-file.png" in missing.stderr


def test_unknown_alias_exits_1_with_the_servers_detail(server: LiveServer, client: httpx.Client) -> None:
    answer = client.get("/workflow-info", params={"workflow": "no-such-workflow"})
    assert answer.status_code == 400
    done = cli("run", "no-such-workflow", "--url", server.url)
    assert done.returncode == 1
    assert f"error: {answer.json()['detail']}" in done.stderr


def test_no_server_is_a_clear_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    done = cli("list", "--url", url)
    assert done.returncode == 1
    assert url in done.stderr and "Traceback" not in done.stderr


# -- the client's own parts, no server ------------------------------------------------------------


def test_multipart_round_trips_binary_payloads() -> None:
    boundary = "b0undary"
    payloads = {
        "png": bytes(range(256)) * 8,
        "crlf": b"\r\n--b0undar\r\n\r\r\n",  # line breaks and a near-boundary inside, one at the end
        "empty": b"",
    }
    body = b""
    for name, data in payloads.items():
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    parts = parse_multipart(f"multipart/form-data; boundary={boundary}", body)
    assert [(p.name, p.filename, p.data) for p in parts] == [(n, f"{n}.bin", d) for n, d in payloads.items()]
    with pytest.raises(ValueError):
        parse_multipart("application/json", b"{}")


def test_saving_stays_inside_the_folder_and_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"old")
    first = save_part(tmp_path, Part("r", "../../a.png", "image/png", b"new"), 0)
    second = save_part(tmp_path, Part("r", "a.png", "image/png", b"newer"), 1)
    dots = save_part(tmp_path, Part("result", "..", "image/png", b"x"), 2)
    assert (tmp_path / "a.png").read_bytes() == b"old"
    assert [first.name, second.name] == ["a-1.png", "a-2.png"]
    assert dots.parent == tmp_path and dots.name == "result.png"


def test_values_convert_by_declared_type() -> None:
    assert convert("k", "int", "7") == 7
    assert convert("k", "float", "0.5") == 0.5
    assert convert("k", "bool", "Yes") is True and convert("k", "bool", "0") is False
    assert convert("k", "str", "12") == "12"
    for kind, text in (("int", "1.5"), ("float", "nan"), ("bool", "maybe")):
        with pytest.raises(ValueError, match="k expects"):
            convert("k", kind, text)
