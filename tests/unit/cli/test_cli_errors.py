"""CLI failures: exit codes from the error table, the spec's error JSON, config errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from genserve.models.demo import pipeline as demo
from genserve.services.pipeline.samplers import SAMPLERS
from tests.unit.cli.conftest import console_script, invoke, run_error


def test_unknown_sampler_exits_3_listing_accepted_samplers(env: dict[str, str]) -> None:
    body = run_error(
        [
            "sample",
            "--positive-encoding-file",
            "p.pt",
            "--latent-file",
            "l.pt",
            "--request-id",
            "rid-3",
            "--sampler-name",
            "bogus",
        ],
        env,
        3,
        "INVALID_INPUT",
    )
    assert body["request_id"] == "rid-3" and "bogus" in body["error_message"]
    assert all(name in body["error_message"] for name in SAMPLERS)


def test_missing_image_exits_5(env: dict[str, str]) -> None:
    body = run_error(["encode-latent", "--image-path", "inputs/nope.png"], env, 5, "IMAGE_NOT_FOUND")
    assert "nope.png" in body["error_message"]


def test_missing_model_exits_4(env: dict[str, str], data_root: Path) -> None:
    args = ["encode-latent", "--image-path", str(data_root / "inputs" / "person.png")]
    body = run_error([*args, "--vae-model-name", "nope.safetensors"], env, 4, "MODEL_NOT_FOUND")
    assert "nope.safetensors" in body["error_message"] and demo.DEMO_VAE in body["error_message"]


def test_missing_required_field_is_invalid_input(env: dict[str, str]) -> None:
    body = run_error(["encode-text", "--prompt", "x"], env, 3, "INVALID_INPUT")
    assert "image1_path" in body["error_message"]


def test_unexpected_exception_exits_1_with_internal_error(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import genserve.app.runtime

    def broken(*_: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(genserve.app.runtime, "build_runtime", broken)
    body = run_error(["encode-latent", "--image-path", "x.png"], env, 1, "INTERNAL")
    assert "disk on fire" in body["error_message"]


@pytest.mark.parametrize("command", [["encode-latent", "--image-path", "x.png"], ["devices"]])
def test_bad_config_key_exits_2_naming_it(env: dict[str, str], command: list[str]) -> None:
    result = invoke(command, {**env, "GENSERVE_PIPELINE__NOPE": "1"})
    assert result.exit_code == 2 and result.stdout == ""
    assert "pipeline.nope" in result.stderr and "unknown key" in result.stderr


def test_bad_config_file_exits_2_through_the_console_script(tmp_path: Path) -> None:
    config = tmp_path / "genserve.yaml"
    config.write_text("pipeline:\n  steps: 0\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    done = subprocess.run(
        [str(console_script()), "--config", str(config), "devices"],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "pipeline.steps" in done.stderr and str(config) in done.stderr


def test_usage_errors_keep_typers_exit_2(env: dict[str, str]) -> None:
    assert invoke(["sample", "--steps", "many"], env).exit_code == 2
    assert invoke(["decode", "--json-input", "/nonexistent.json"], env).exit_code == 2
