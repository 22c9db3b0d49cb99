"""Health, metrics, OpenAPI, request ids and the model admin endpoints on a live server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from genserve.api.rest.pipeline import ROUTES
from genserve.services.pipeline import examples
from tests.integration.conftest import LiveServer

VAE = "qwen_image_vae"


def test_health_live_and_ready(client: httpx.Client, server: LiveServer) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["models_dir"]["ok"] and checks["executor"]["ok"]
    assert checks["executor"]["devices"]["cpu"]["capacity"] == 65  # 1 worker + queue of 64


def test_openapi_describes_every_endpoint_with_the_spec_examples(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, name, _ in ROUTES:
        operation = paths[path]["post"]
        body = operation["requestBody"]["content"]["application/json"]
        assert body["examples"]["spec"]["value"] == examples.REQUESTS[name]
        assert operation["responses"]["200"]["content"]["application/json"]["example"]["status"] == "success"
        assert {"400", "404", "429", "500"} <= set(operation["responses"])
    for path in ("/api/v1/models", "/api/v1/models/stats", "/health/live", "/health/ready", "/metrics"):
        assert "get" in paths[path]
    assert "post" in paths["/api/v1/models/{kind}/{name}/load"]
    assert "post" in paths["/api/v1/models/{kind}/{name}/unload"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_request_id_is_taken_echoed_and_logged(
    client: httpx.Client, server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="genserve"):
        given = client.post(
            "/api/v1/latent/encode",
            json={"image_path": "inputs/person.png"},
            headers={"X-Request-ID": "trace-42"},
        )
        made = client.get("/health/live")
    assert given.headers["x-request-id"] == "trace-42" and given.json()["request_id"] == "trace-42"
    assert "trace-42" in given.json()["latent_file_path"]
    generated = made.headers["x-request-id"]
    assert len(generated) == 36 and generated != "trace-42"
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-42"]
    assert {r.name for r in records} >= {"genserve.http", "genserve.engine"}
    http = next(r for r in records if r.name == "genserve.http")
    assert (http.method, http.route, http.status) == ("POST", "/api/v1/latent/encode", 200)


def test_ids_that_differ_only_in_symbols_get_their_own_output_files(client: httpx.Client) -> None:
    paths = {
        client.post(
            "/api/v1/latent/encode", json={"image_path": "inputs/person.png"}, headers={"X-Request-ID": given}
        ).json()["latent_file_path"]
        for given in ("job.1", "job1", "job/1", "job:1")
    }
    assert len(paths) == 4 and all(Path(path).is_file() for path in paths)


def test_metrics_count_requests_latency_and_models(client: httpx.Client) -> None:
    client.post("/api/v1/latent/encode", json={"image_path": "inputs/person.png"})
    client.post("/api/v1/latent/encode", json={"image_path": "inputs/absent.png"})
    text = client.get("/metrics").text
    ok = 'genserve_http_requests_total{method="POST",route="/api/v1/latent/encode",status="200"}'
    missing = 'genserve_http_requests_total{method="POST",route="/api/v1/latent/encode",status="404"}'
    assert ok in text and missing in text
    assert (
        'genserve_http_request_duration_seconds_bucket{le="0.5",method="POST",route="/api/v1/latent/encode"}'
        in text
    )
    assert (
        'genserve_service_duration_seconds_count{device="cpu",outcome="IMAGE_NOT_FOUND",service="latent_encoder"}'
        in text
    )
    assert "genserve_models_loaded " in text and "genserve_queue_depth{" in text
    assert f'genserve_model_loads_total{{kind="vae",name="{VAE}"}}' in text
    assert f'genserve_model_inference_seconds_total{{kind="vae",name="{VAE}"}}' in text
    assert "genserve_http_inflight " in text


def test_models_list_shows_disk_config_and_load_state(client: httpx.Client) -> None:
    client.post(f"/api/v1/models/vae/{VAE}/load")
    listing = client.get("/api/v1/models").json()
    rows = {(m["kind"], m["name"]): m for m in listing["models"]}
    assert {("vae", VAE), ("text_encoders", "qwen_2.5_vl_7b_fp8_scaled")} <= set(rows)
    assert ("loras", "Qwen-Image-Lightning-4steps-V2.0.safetensors") in rows
    vae = rows[("vae", VAE)]
    assert vae["on_disk"] and vae["size_bytes"] > 0 and vae["configured_as"] == ["pipeline.vae_model_name"]
    assert vae["loaded"] and vae["device"] == "cpu" and vae["memory_bytes"] > 0
    only = client.get("/api/v1/models", params={"kind": "loras"}).json()["models"]
    assert [m["kind"] for m in only] == ["loras"]


def test_load_unload_and_stats(client: httpx.Client) -> None:
    client.post(f"/api/v1/models/vae/{VAE}.safetensors/unload")
    loaded = client.post(f"/api/v1/models/vae/{VAE}.safetensors/load", json={"device": "cpu"})
    assert loaded.status_code == 200, loaded.text
    body = loaded.json()
    assert (
        body["changed"]
        and body["name"] == VAE
        and body["model"]["loaded"]
        and body["model"]["device"] == "cpu"
    )
    again = client.post(f"/api/v1/models/vae/{VAE}/load").json()
    assert not again["changed"]  # already loaded: left as it is
    stats = client.get("/api/v1/models/stats").json()
    assert stats["max_loaded"] == 8 and stats["loaded_count"] >= 1
    assert stats["memory_bytes_by_device"]["cpu"] >= body["model"]["memory_bytes"]
    unloaded = client.post(f"/api/v1/models/vae/{VAE}/unload", json={"timeout_s": 5}).json()
    assert unloaded["changed"] and not unloaded["model"]["loaded"]
    assert not client.post(f"/api/v1/models/vae/{VAE}/unload").json()["changed"]
    rows = {(m["kind"], m["name"]): m for m in client.get("/api/v1/models/stats").json()["models"]}
    assert not rows[("vae", VAE)]["loaded"] and rows[("vae", VAE)]["load_count"] >= 1


def test_error_bodies_are_json_for_every_admin_failure(client: httpx.Client) -> None:
    response = client.post(f"/api/v1/models/vae/{VAE}/unload", json={"timeout_s": -1})
    assert response.status_code == 400
    assert "timeout_s" in json.loads(response.text)["error_message"]
