"""Hostile path and name fields against a real server: every one is a 4xx naming the field,
checked before the file system is touched, and no answer carries a server path."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import LiveServer

COMFY = "/comfy"
LONG = "a" * 5000
LONG_PART = "inputs/" + "b" * 300 + ".png"
WIDE_PART = "é" * 200  # 400 bytes in one component
DEEP = "c/" * 2000
# Every value here is a client's mistake or an attack; the roots are the module's data folder.
READ_VARIANTS = [
    LONG,
    LONG_PART,
    WIDE_PART,
    DEEP,
    "/".join(["d"] * 200),
    "inputs/person.png\x00.txt",
    "\x00",
    "../../../../etc/passwd",
    "inputs/../../outside.png",
    "/etc/passwd",
    "//etc/shadow",
    "inputs/outlink.png",
    "inputs/linkdir/outside.png",
    "\ud800.png",
    "inputs/\udcff.png",
    "inputs/notanimage.png",
    "inputs/absent.png",
    "inputs",
]
WRITE_VARIANTS = [
    LONG,
    "x/" + "b" * 300,
    WIDE_PART,
    DEEP,
    "/".join(["d"] * 200),
    "out\x00put",
    "../../..",
    "../inputs",
    "/etc",
    "/nonexistent/folder",
    "linkout",
    "linkout/deeper",
    "\ud800",
]
NAME_VARIANTS = [LONG, WIDE_PART, DEEP, "n\x00", "../vae", "/etc/passwd", "a/b", "\ud800", ".hidden", ".."]


@pytest.fixture(scope="module", autouse=True)
def hostile_files(module_data: Path) -> None:
    """A file just outside the roots, symlinks in the roots that lead to it, a non-image."""
    outside = module_data.parent / "outside.png"
    outside.write_bytes((module_data / "inputs" / "person.png").read_bytes())
    (module_data / "inputs" / "outlink.png").symlink_to(outside)
    (module_data / "inputs" / "linkdir").symlink_to(module_data.parent)
    (module_data / "outputs" / "linkout").symlink_to(module_data.parent)
    (module_data / "inputs" / "notanimage.png").write_text("just text")


def leaks(server: LiveServer, text: str) -> list[str]:
    """Server paths the text names: the data root, the temp folder, the working tree."""
    markers = {str(server.data), str(server.data.parent), tempfile.gettempdir(), "/tmp", "/work"}
    markers.add(str(Path.cwd()))
    return sorted(marker for marker in markers if marker and marker in text)


def assert_refused(server: LiveServer, response: httpx.Response, *words: str) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, response.text[:2000]
    assert not leaks(server, response.text), response.text[:2000]
    assert not leaks(server, " ".join(f"{k}: {v}" for k, v in response.headers.items()))
    assert "Traceback" not in response.text
    body = response.json()
    for word in words:
        assert word in body["error_message"], body["error_message"]
    return body


@pytest.fixture(scope="module")
def artifacts(server: LiveServer) -> Iterator[dict[str, str]]:
    """A latent and encodings made by the server, for the routes that read them."""
    with server.client() as client:
        latent = client.post("/api/v1/latent/encode", json={"image_path": "inputs/person.png"})
        assert latent.status_code == 200, latent.text
        enc = client.post("/api/v1/text/encode", json={"image1_path": "inputs/person.png", "prompt": "x"})
        assert enc.status_code == 200, enc.text
        yield {
            "latent": latent.json()["latent_file_path"],
            "positive": enc.json()["positive_encoding_file"],
            "negative": enc.json()["negative_encoding_file"],
        }


def post_json(client: httpx.Client, route: str, body: dict[str, Any]) -> httpx.Response:
    """JSON with every non-ASCII character escaped, so a lone surrogate travels as JSON allows."""
    return client.post(route, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def requests_for(field: str, value: str, files: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The route and a body that is valid except for ``field``."""
    sample = {
        "positive_encoding_file": files["positive"],
        "negative_encoding_file": files["negative"],
        "latent_file": files["latent"],
        "sampling_params": {"steps": 1},
    }
    bodies: dict[str, tuple[str, dict[str, Any]]] = {
        "encode.image_path": ("/api/v1/latent/encode", {"image_path": "inputs/person.png"}),
        "encode.output_dir": ("/api/v1/latent/encode", {"image_path": "inputs/person.png"}),
        "encode.vae_model_name": ("/api/v1/latent/encode", {"image_path": "inputs/person.png"}),
        "text.image1_path": ("/api/v1/text/encode", {"image1_path": "", "prompt": "x"}),
        "text.image2_path": ("/api/v1/text/encode", {"image1_path": "inputs/person.png", "prompt": "x"}),
        "text.clip_model_name": ("/api/v1/text/encode", {"image1_path": "inputs/person.png", "prompt": "x"}),
        "sample.latent_file": ("/api/v1/sampling/sample", sample),
        "sample.positive_encoding_file": ("/api/v1/sampling/sample", sample),
        "sample.unet_model_name": ("/api/v1/sampling/sample", sample),
        "decode.latent_file": ("/api/v1/decoding/decode", {"latent_file": files["latent"]}),
        "decode.output_dir": ("/api/v1/decoding/decode", {"latent_file": files["latent"]}),
        "decode.output_filename": ("/api/v1/decoding/decode", {"latent_file": files["latent"]}),
        "edit.image1_path": (
            "/api/v1/edit",
            {"image1_path": "", "prompt": "x", "sampling_params": {"steps": 1}},
        ),
    }
    route, body = bodies[field]
    return route, {**body, field.split(".", 1)[1]: value}


READ_FIELDS = [
    "encode.image_path",
    "text.image1_path",
    "text.image2_path",
    "sample.latent_file",
    "sample.positive_encoding_file",
    "decode.latent_file",
    "edit.image1_path",
]
WRITE_FIELDS = ["encode.output_dir", "decode.output_dir"]
NAME_FIELDS = [
    "encode.vae_model_name",
    "text.clip_model_name",
    "sample.unet_model_name",
    "decode.output_filename",
]


@pytest.mark.parametrize(
    ("field", "variants"),
    [(f, READ_VARIANTS) for f in READ_FIELDS]
    + [(f, WRITE_VARIANTS) for f in WRITE_FIELDS]
    + [(f, NAME_VARIANTS) for f in NAME_FIELDS if f != "decode.output_filename"]
    + [("decode.output_filename", [v for v in NAME_VARIANTS if v != ".hidden"])],
)
def test_bad_paths_and_names_are_4xx_without_server_paths(
    client: httpx.Client, server: LiveServer, artifacts: dict[str, str], field: str, variants: list[str]
) -> None:
    """Long, deep, NUL, ``..``, absolute, symlinked out, unencodable: each a 4xx, no path leaked."""
    failures = []
    for value in variants:
        route, body = requests_for(field, value, artifacts)
        response = post_json(client, route, body)
        wrong_status = not 400 <= response.status_code < 500
        leaked = leaks(server, response.text)
        if wrong_status or leaked or "Traceback" in response.text:
            failures.append(f"{value[:40]!r}: {response.status_code} {response.text[:300]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/api/v1/latent/encode", {"image_path": LONG}, "image_path"),
        ("/api/v1/latent/encode", {"image_path": LONG_PART}, "image_path"),
        (
            "/api/v1/latent/encode",
            {"image_path": "inputs/person.png", "vae_model_name": LONG},
            "vae_model_name",
        ),
        (
            "/api/v1/text/encode",
            {"image1_path": "inputs/person.png", "image2_path": LONG, "prompt": "x"},
            "image2_path",
        ),
        ("/api/v1/decoding/decode", {"latent_file": LONG}, "latent_file"),
        ("/api/v1/latent/encode", {"image_path": "inputs/person.png", "output_dir": DEEP}, "output_dir"),
        ("/api/v1/latent/encode", {"image_path": "inputs/person.png", "output_dir": LONG}, "output_dir"),
    ],
)
def test_long_and_deep_paths_are_invalid_input_naming_the_field(
    client: httpx.Client, server: LiveServer, route: str, body: dict[str, Any], field: str
) -> None:
    """A 5,000-character path, a 300-byte component or 2,000 levels: refused before any file call
    (they were 500 ``File name too long`` with the absolute path, or ``RecursionError``)."""
    err = assert_refused(server, client.post(route, json=body), field)
    assert err["error_code"] == "INVALID_INPUT"
    assert len(err["error_message"]) < 500  # the value is not echoed in full


def test_longest_output_filename_with_a_long_request_id(
    client: httpx.Client, server: LiveServer, artifacts: dict[str, str]
) -> None:
    """The documented maximum name (185 bytes) and a 64-character request id fit, temp file included."""
    name, request_id = "é" * 92 + "a", "r" * 64
    body = {"latent_file": artifacts["latent"], "output_filename": name, "output_format": "webp"}
    response = client.post("/api/v1/decoding/decode", json=body, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    path = Path(response.json()["image_file_path"])
    assert path.name == f"{name}_{request_id}.webp" and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_sandbox_refusals_name_roots_by_setting(client: httpx.Client, server: LiveServer) -> None:
    """Roots are named by their setting, never their path, in the message and in details."""
    read = assert_refused(server, client.post("/api/v1/latent/encode", json={"image_path": "/etc/passwd"}))
    assert read["error_code"] == "PERMISSION_DENIED"
    assert "storage.read_roots" in read["error_message"]
    assert read["details"]["roots"] == ["storage.read_roots", "storage.write_roots"]
    body = {"image_path": "inputs/person.png", "output_dir": "/etc"}
    write = assert_refused(server, client.post("/api/v1/latent/encode", json=body), "output_dir")
    assert write["error_code"] == "OUTPUT_DIR_NOT_WRITABLE"
    assert "storage.write_roots" in write["error_message"]
    assert write["details"]["roots"] == ["storage.write_roots"]
    linked = assert_refused(
        server, client.post("/api/v1/latent/encode", json={"image_path": "inputs/outlink.png"})
    )
    assert linked["error_code"] == "PERMISSION_DENIED"


VIEW_VARIANTS: list[dict[str, str] | str] = [
    "filename=%FF%FE.png&type=input",  # not UTF-8 at all
    "filename=person.png&type=input&subfolder=%ED%A0%80",  # an encoded lone surrogate
    {"filename": LONG},
    {"filename": "b" * 300 + ".png"},
    {"filename": WIDE_PART},
    {"filename": "person.png", "subfolder": DEEP},
    {"filename": "person.png", "subfolder": LONG},
    {"filename": "person.png", "subfolder": "x/" + "s" * 300},
    {"filename": "person.png\x00.txt", "type": "input"},
    {"filename": "../person.png", "type": "output"},
    {"filename": "person.png", "subfolder": "../..", "type": "input"},
    {"filename": "/etc/passwd", "type": "input"},
    {"filename": "passwd", "subfolder": "/etc", "type": "input"},
    {"filename": "outlink.png", "type": "input"},
    {"filename": "outside.png", "subfolder": "linkdir", "type": "input"},
    {"filename": "person.png", "type": "secret"},
    {"filename": ""},
]


def test_view_refuses_bad_names_without_5xx(server: LiveServer) -> None:
    failures = []
    with httpx.Client(base_url=server.url + COMFY, timeout=60.0) as client:
        assert client.get("/view", params={"filename": "person.png", "type": "input"}).status_code == 200
        for params in VIEW_VARIANTS:
            if isinstance(params, str):
                response = client.get("/view?" + params)
            else:
                response = client.get("/view", params=params)
            if not 400 <= response.status_code < 500 or leaks(server, response.text):
                failures.append(f"{str(params)[:80]}: {response.status_code} {response.text[:300]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["猫_00001_.png", 'quote"d\r\nX-Evil: 1.png', "naïve café.png"])
def test_view_serves_any_saved_name_with_an_encoded_disposition(server: LiveServer, name: str) -> None:
    """A SaveImage output named outside Latin-1 (or holding quotes and line breaks) is served with
    an RFC 5987 Content-Disposition, not a 500 or a forged header."""
    folder = server.runtime.settings.workflows.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / name).write_bytes((server.data / "inputs" / "person.png").read_bytes())
    except OSError:
        pytest.skip("the file system refuses this name")
    with httpx.Client(base_url=server.url + COMFY, timeout=60.0) as client:
        response = client.get("/view", params={"filename": name})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    disposition = response.headers["content-disposition"]
    assert "\r" not in disposition and "\n" not in disposition
    assert "x-evil" not in response.headers
    if name.isascii() and '"' not in name and "\r" not in name:
        assert f'filename="{name}"' in disposition
    else:
        assert "filename*=utf-8''" in disposition


def test_deep_output_dir_leaves_the_log_small(
    server: LiveServer, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"image_path": "inputs/person.png", "output_dir": DEEP}
    with caplog.at_level("DEBUG"):
        assert_refused(server, client.post("/api/v1/latent/encode", json=body), "output_dir")
    assert sum(len(record.getMessage()) for record in caplog.records) < 20_000
    assert not any("RecursionError" in (record.exc_text or "") for record in caplog.records)


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/api/v1/latent/encode", {"image_path": "inputs/person.png"}, "vae_model_name"),
        ("/api/v1/text/encode", {"image1_path": "inputs/person.png", "prompt": "x"}, "clip_model_name"),
        ("/api/v1/text/encode", {"image1_path": "inputs/person.png", "prompt": "x"}, "vae_model_name"),
    ],
)
def test_model_names_are_bounded(
    client: httpx.Client, server: LiveServer, route: str, body: dict[str, Any], field: str
) -> None:
    """A model name is one file name: 5,000 characters is INVALID_INPUT, not ``File name too long``."""
    err = assert_refused(server, client.post(route, json={**body, field: LONG}), field)
    assert err["error_code"] == "INVALID_INPUT"
