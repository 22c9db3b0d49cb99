"""The CLI door, driven in-process with typer's CliRunner and once as the installed console script.

Configuration travels the way a user passes it, through GENSERVE_* variables, so the pipelines
run at 128x128 on the demo models. Every pipeline command must print only JSON on stdout."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from genserve.cli import commands as cli
from genserve.models.demo import pipeline as demo
from genserve.models.registry import ModelKind
from tests.unit.cli.conftest import (
    PROGRESS_MARKS,
    PROMPT,
    console_script,
    encode_inputs,
    invoke,
    run_error,
    run_json,
)


def test_models_demo_if_missing_builds_once(tmp_path: Path) -> None:
    args = ["models", "demo", "--dir", str(tmp_path / "m"), "--images-dir", str(tmp_path / "img")]
    first = invoke([*args, "--if-missing"])
    assert first.exit_code == 0, first.output
    assert "built" in first.stdout and "nothing to do" not in first.stdout
    assert demo.demo_present(tmp_path / "m")
    assert (tmp_path / "img" / "person.png").is_file() and (tmp_path / "img" / "cloth.png").is_file()
    second = invoke([*args, "--if-missing"])
    assert second.exit_code == 0 and "nothing to do" in second.stdout and "built" not in second.stdout
    third = invoke(args)  # without --if-missing it runs again and keeps what exists
    assert third.exit_code == 0 and "skipped" in third.stdout and "  built" not in third.stdout


def test_models_list_shows_demo_models_by_kind(env: dict[str, str], demo_models: Path) -> None:
    listing = run_json(["models", "list", "--json"], env)
    assert listing["models_dir"] == str(demo_models)
    assert set(listing["models"]) == {kind.value for kind in ModelKind}
    names = {kind: [m["name"] for m in models] for kind, models in listing["models"].items()}
    assert names["vae"] == [demo.DEMO_VAE]
    assert names["text_encoders"] == [demo.DEMO_TEXT_ENCODER]
    assert names["diffusion_models"] == [demo.DEMO_TRANSFORMER]
    assert names["loras"] == [demo.DEMO_LORA]
    lora = listing["models"]["loras"][0]
    assert lora["size_bytes"] == (demo_models / "loras" / demo.DEMO_LORA).stat().st_size
    assert listing["loaded"] == [] and not any(m["loaded"] for ms in listing["models"].values() for m in ms)
    table = invoke(["models", "list"], env)
    assert table.exit_code == 0 and demo.DEMO_LORA in table.stdout and "loaded" in table.stdout


def test_devices_json_ends_with_the_cpu(env: dict[str, str]) -> None:
    found = run_json(["devices", "--json"], env)
    assert found[-1]["name"] == "cpu" and found[-1]["total_bytes"] > 0


def test_split_chain_feeds_each_step_into_the_next(env: dict[str, str], data_root: Path) -> None:
    latent, text = encode_inputs(env, data_root)
    latent_file = latent["latent_file_path"]
    assert Path(latent_file).is_file() and Path(text["positive_encoding_file"]).is_file()
    sampled = run_json(
        [
            "sample",
            *("--positive-encoding-file", text["positive_encoding_file"]),
            *("--negative-encoding-file", text["negative_encoding_file"]),
            *("--latent-file", latent_file),
            *("--seed", "5", "--cfg", "2.5", "--request-id", "chain-1"),
        ],
        env,
    )
    assert sampled["request_id"] == "chain-1" and sampled["sampling_metadata"]["cfg"] == 2.5
    out_dir = data_root / "outputs" / "final"
    decoded = run_json(
        [
            "decode",
            *("--latent-file", sampled["sampled_latent_file"]),
            *("--output-filename", "chain", "--output-format", "png", "--output-dir", str(out_dir)),
        ],
        env,
    )
    path = Path(decoded["image_file_path"])
    assert path.parent == out_dir and path.name.startswith("chain_") and path.suffix == ".png"
    assert path.stat().st_size == decoded["file_size"]
    with Image.open(path) as image:
        assert [image.height, image.width, len(image.getbands())] == decoded["image_shape"]
    width, height = latent["metadata"]["scaled_size"]  # the person image at about 128x128 pixels
    assert decoded["image_shape"][:2] == [height, width] and abs(width * height / 128**2 - 1) < 0.1


def test_unset_options_are_not_sent(env: dict[str, str], data_root: Path) -> None:
    latent, text = encode_inputs(env, data_root)
    latent_file = latent["latent_file_path"]
    base = [
        "sample",
        "--positive-encoding-file",
        text["positive_encoding_file"],
        "--latent-file",
        latent_file,
    ]
    assert run_json(base, env)["sampling_metadata"]["steps"] == 4  # the config's default
    assert run_json([*base, "--steps", "2"], env)["sampling_metadata"]["steps"] == 2
    changed = {**env, "GENSERVE_PIPELINE__STEPS": "3", "GENSERVE_PIPELINE__SHIFT": "2.0"}
    metadata = run_json(base, changed)["sampling_metadata"]
    assert metadata["steps"] == 3 and metadata["shift"] == 2.0


def test_json_input_takes_a_kafka_message_and_options_override_it(
    env: dict[str, str], data_root: Path, tmp_path: Path
) -> None:
    latent, text = encode_inputs(env, data_root)
    latent_file = latent["latent_file_path"]
    message = {
        "request_id": "from-file",
        "service": "sampling",
        "input": {
            "positive_encoding_file": text["positive_encoding_file"],
            "latent_file": latent_file,
            "sampling_params": {"seed": 11, "steps": 3},
        },
        "output": {"topic": "sampling-responses", "key": "request_id"},
    }
    request = tmp_path / "request.json"
    request.write_text(json.dumps(message))
    sampled = run_json(["sample", "--json-input", str(request), "--steps", "1"], env)
    assert sampled["request_id"] == "from-file"
    assert sampled["sampling_metadata"]["seed"] == 11 and sampled["sampling_metadata"]["steps"] == 1
    body = run_error(["decode", "--json-input", str(request)], env, 3, "INVALID_INPUT")
    assert "sampling" in body["error_message"] and body["request_id"] == "from-file"


def test_progress_goes_to_stderr_only_on_a_terminal(
    env: dict[str, str], data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    latent, text = encode_inputs(env, data_root)
    latent_file = latent["latent_file_path"]  # no TTY here: no progress output
    args = [
        "sample",
        "--positive-encoding-file",
        text["positive_encoding_file"],
        "--latent-file",
        latent_file,
    ]
    plain = invoke(args, env)  # stderr is not a terminal here: no progress output
    assert plain.exit_code == 0 and not PROGRESS_MARKS & set(plain.stderr) and "4/4" not in plain.stderr
    monkeypatch.setattr(cli, "_stderr_is_tty", lambda: True)
    shown = invoke(args, env)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["status"] == "success"
    assert re.search(r"✓ loaded diffusion_models/\S+ +━+ 1/1", shown.stderr), shown.stderr
    assert re.search(r"✓ sampling +━+ 4/4", shown.stderr), shown.stderr
    quiet = invoke([*args, "--quiet"], env)
    assert quiet.exit_code == 0 and not PROGRESS_MARKS & set(quiet.stderr) and "4/4" not in quiet.stderr


def test_edit_as_the_installed_console_script(env: dict[str, str], data_root: Path, tmp_path: Path) -> None:
    inputs = data_root / "inputs"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    done = subprocess.run(
        [
            str(console_script()),
            "edit",
            *("--image1-path", str(inputs / "person.png"), "--image2-path", str(inputs / "cloth.png")),
            *("--prompt", PROMPT, "--steps", "2", "--output-format", "png"),
        ],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)  # the whole of stdout is the response
    path = Path(response["image_file_path"])
    with Image.open(path) as image:
        assert [image.height, image.width, 3] == response["image_shape"]
    assert abs(image.width * image.height / 128**2 - 1) < 0.1
    assert response["metadata"]["sampling"]["steps"] == 2
    assert not PROGRESS_MARKS & set(done.stderr) and "2/2" not in done.stderr  # a pipe: no progress
