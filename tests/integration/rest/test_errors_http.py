"""Every error code through HTTP: the spec's error body, the status from the one table."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from genserve.errors import ERROR_TABLE, ErrorCode
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[LiveServer]:
    """The demo models plus two broken ones: a VAE whose weights are garbage and a text
    encoder whose image processor does not fit its vision tower."""
    root = tmp_path_factory.mktemp("errors")
    models = root / "models"
    shutil.copytree(demo_models, models)
    shutil.copytree(models / "vae" / "qwen_image_vae", models / "vae" / "broken_vae")
    for weights in (models / "vae" / "broken_vae").glob("*.safetensors"):
        weights.write_bytes(b"this is not a safetensors file")
    te = models / "text_encoders"
    shutil.copytree(te / "qwen_2.5_vl_7b_fp8_scaled", te / "mismatched_te")
    processor = te / "mismatched_te" / "preprocessor_config.json"
    config = json.loads(processor.read_text())
    config["patch_size"] = 16
    processor.write_text(json.dumps(config))
    data = make_data_root(root / "data", demo_images)
    with live_server(small_settings(models, data, GENSERVE_SERVER__MAX_BODY_BYTES="4096"), data) as live:
        yield live


def fails(response: httpx.Response, code: ErrorCode, *words: str) -> dict[str, Any]:
    assert response.status_code == ERROR_TABLE[code].http_status, response.text
    body = response.json()
    assert set(body) >= {"status", "request_id", "error_code", "error_message", "timestamp"}
    assert body["status"] == "error" and body["error_code"] == code.value
    assert body["request_id"] == response.headers["x-request-id"]
    assert TIMESTAMP.fullmatch(body["timestamp"])
    assert "Traceback" not in response.text
    for word in words:
        assert word in body["error_message"], body["error_message"]
    return body


def test_unknown_field_is_invalid_input_naming_it(client: httpx.Client, server: LiveServer) -> None:
    body = {"image_path": str(server.data / "inputs/person.png"), "vae_name": "x"}
    err = fails(client.post("/api/v1/latent/encode", json=body), ErrorCode.INVALID_INPUT, "vae_name")
    assert err["details"]["fields"] == ["vae_name"]


def test_nested_bad_value_names_the_nested_field(client: httpx.Client) -> None:
    body = {"positive_encoding_file": "a.pt", "latent_file": "b.pt", "sampling_params": {"steps": 0}}
    fails(client.post("/api/v1/sampling/sample", json=body), ErrorCode.INVALID_INPUT, "sampling_params.steps")


def test_missing_field_wrong_type_and_bad_json(client: httpx.Client) -> None:
    fails(client.post("/api/v1/decoding/decode", json={}), ErrorCode.INVALID_INPUT, "latent_file")
    bad_type = {"latent_file": "x.pt", "output_format": "gif"}
    fails(client.post("/api/v1/decoding/decode", json=bad_type), ErrorCode.INVALID_INPUT, "output_format")
    broken = client.post("/api/v1/decoding/decode", content=b'{"latent_file": ', headers=JSON)
    fails(broken, ErrorCode.INVALID_INPUT, "not valid JSON")
    fails(client.post("/api/v1/decoding/decode"), ErrorCode.INVALID_INPUT, "body")


JSON = {"content-type": "application/json"}


def test_bad_headers_are_invalid_input(client: httpx.Client, server: LiveServer) -> None:
    body = {"image_path": str(server.data / "inputs/person.png")}
    response = client.post("/api/v1/latent/encode", json=body, headers={"X-Request-ID": "a b"})
    fails(response, ErrorCode.INVALID_INPUT, "X-Request-ID")
    response = client.post("/api/v1/latent/encode", json=body, headers={"X-Request-Timeout": "-1"})
    fails(response, ErrorCode.INVALID_INPUT, "X-Request-Timeout")


def test_unknown_model_is_model_not_found(client: httpx.Client, server: LiveServer) -> None:
    body = {"image_path": str(server.data / "inputs/person.png"), "vae_model_name": "nope.safetensors"}
    err = fails(
        client.post("/api/v1/latent/encode", json=body),
        ErrorCode.MODEL_NOT_FOUND,
        "VAE model not found: nope",
    )
    assert "qwen_image_vae" in err["details"]["available"]


def test_missing_image_and_missing_latent(client: httpx.Client, server: LiveServer) -> None:
    body = {"image_path": str(server.data / "inputs/absent.png")}
    fails(client.post("/api/v1/latent/encode", json=body), ErrorCode.IMAGE_NOT_FOUND, "absent.png")
    body = {"latent_file": str(server.data / "outputs/absent.pt")}
    fails(client.post("/api/v1/decoding/decode", json=body), ErrorCode.NOT_FOUND, "absent.pt")


def test_paths_outside_the_roots(client: httpx.Client, server: LiveServer) -> None:
    fails(
        client.post("/api/v1/latent/encode", json={"image_path": "/etc/passwd"}), ErrorCode.PERMISSION_DENIED
    )
    sneaky = {"image_path": "inputs/../../../../etc/passwd"}
    fails(client.post("/api/v1/latent/encode", json=sneaky), ErrorCode.PERMISSION_DENIED)
    body = {"image_path": str(server.data / "inputs/person.png"), "output_dir": "/tmp"}
    fails(client.post("/api/v1/latent/encode", json=body), ErrorCode.OUTPUT_DIR_NOT_WRITABLE, "output_dir")


def test_failed_stages_are_500_with_their_code(client: httpx.Client, server: LiveServer) -> None:
    inputs = server.data / "inputs"
    pair = {
        "image1_path": str(inputs / "person.png"),
        "image2_path": str(inputs / "cloth.png"),
        "prompt": "x",
    }
    response = client.post("/api/v1/text/encode", json={**pair, "clip_model_name": "mismatched_te"})
    fails(response, ErrorCode.ENCODING_FAILED)

    latent = client.post("/api/v1/latent/encode", json={"image_path": str(inputs / "person.png")}).json()
    enc = client.post("/api/v1/text/encode", json=pair).json()
    positive = torch.load(enc["positive_encoding_file"], weights_only=True)
    positive["prompt_embeds"] = torch.randn(1, positive["prompt_embeds"].shape[1], 32)  # wrong width
    foreign = server.data / "outputs/foreign.pt"
    torch.save(positive, foreign)
    body = {"positive_encoding_file": str(foreign), "latent_file": latent["latent_file_path"]}
    fails(client.post("/api/v1/sampling/sample", json=body), ErrorCode.SAMPLING_FAILED)

    wide = server.data / "outputs/wide.pt"  # 16,400 pixels wide: past WebP's limit
    torch.save({"latent": torch.zeros(1, 16, 1, 2, 2050)}, wide)
    body = {"latent_file": str(wide), "output_format": "webp"}
    fails(client.post("/api/v1/decoding/decode", json=body), ErrorCode.DECODING_FAILED, "webp")


def test_a_model_that_cannot_load_is_internal_without_a_traceback(
    client: httpx.Client, server: LiveServer
) -> None:
    body = {"image_path": str(server.data / "inputs/person.png"), "vae_model_name": "broken_vae.safetensors"}
    fails(client.post("/api/v1/latent/encode", json=body), ErrorCode.INTERNAL, "broken_vae")
    assert client.get("/health/ready").status_code == 200  # the server carries on


def test_routing_errors_keep_the_format(client: httpx.Client) -> None:
    fails(client.get("/api/v1/nothing"), ErrorCode.NOT_FOUND, "/api/v1/nothing")
    fails(client.get("/api/v1/decoding/decode"), ErrorCode.METHOD_NOT_ALLOWED)
    big = {"latent_file": "x" * 5000}
    fails(client.post("/api/v1/decoding/decode", json=big), ErrorCode.PAYLOAD_TOO_LARGE, "4096")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is found while reading
        yield b'{"latent_file": "'
        for _ in range(5):
            yield b"x" * 1000
        yield b'"}'

    response = client.post("/api/v1/decoding/decode", content=chunked())
    assert "content-length" not in response.request.headers
    fails(response, ErrorCode.PAYLOAD_TOO_LARGE, "4096")


def test_unknown_kind_and_model_in_admin(client: httpx.Client) -> None:
    fails(client.post("/api/v1/models/gpus/x/load"), ErrorCode.INVALID_INPUT, "kind")
    fails(client.post("/api/v1/models/vae/nope/load"), ErrorCode.MODEL_NOT_FOUND, "nope")
    fails(
        client.post("/api/v1/models/vae/qwen_image_vae/load", json={"device": "tpu"}), ErrorCode.INVALID_INPUT
    )
    fails(
        client.post("/api/v1/models/vae/qwen_image_vae/load", json={"devise": "cpu"}), ErrorCode.INVALID_INPUT
    )


def test_an_empty_first_image_is_refused_not_skipped(client: httpx.Client) -> None:
    body = {"image1_path": "", "prompt": "x"}
    fails(client.post("/api/v1/text/encode", json=body), ErrorCode.INVALID_INPUT, "image1_path")


def test_latents_of_the_wrong_batch_or_width_are_named_not_dropped(
    client: httpx.Client, server: LiveServer
) -> None:
    inputs = server.data / "inputs"
    latent = client.post("/api/v1/latent/encode", json={"image_path": str(inputs / "person.png")}).json()
    pair = torch.load(latent["latent_file_path"], weights_only=True)
    pair["latent"] = pair["latent"].repeat(2, 1, 1, 1, 1)  # two images in one file
    batched = server.data / "outputs/batched.pt"
    torch.save(pair, batched)
    body = {"latent_file": str(batched)}
    fails(
        client.post("/api/v1/decoding/decode", json=body),
        ErrorCode.INVALID_INPUT,
        "latent_file",
        "batch of 2",
    )

    narrow = server.data / "outputs/narrow.pt"
    torch.save({"latent": torch.zeros(1, 4, 1, 8, 8)}, narrow)
    enc = client.post("/api/v1/text/encode", json={"image1_path": str(inputs / "person.png"), "prompt": "x"})
    body = {"positive_encoding_file": enc.json()["positive_encoding_file"], "latent_file": str(narrow)}
    fails(
        client.post("/api/v1/sampling/sample", json=body), ErrorCode.INVALID_INPUT, "latent_file", "4 latent"
    )
