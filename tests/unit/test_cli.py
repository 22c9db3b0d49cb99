"""The CLI door, driven in-process with typer's CliRunner and once as the installed console script.

Configuration travels the way a user passes it, through GENSERVE_* variables, so the pipelines
run at 128x128 on the demo models. Every pipeline command must print only JSON on stdout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner, Result

from genserve import cli
from genserve.cli_options import NESTED, request_body
from genserve.models import demo
from genserve.models.registry import ModelKind
from genserve.services.catalog import SERVICES
from genserve.services.samplers import SAMPLERS
from tests.conftest import SMALL_MP, VISION_MP

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COMMON = {"request_id", "json_input", "quiet"}
SERVICE_OF = {
    "encode-latent": "latent_encoder",
    "encode-text": "text_encoder",
    "sample": "sampling",
    "decode": "decoding",
    "edit": "edit",
}
PROGRESS_MARKS = {"━", "✓"}  # rich's bar and finished-spinner characters
PROMPT = "by using the green masked area, put the cloth on the person"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GENSERVE_* from the outer shell and no ./genserve.yaml: each test says its own config."""
    for name in list(os.environ):
        if name.startswith("GENSERVE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def env(demo_models: Path, data_root: Path) -> dict[str, str]:
    """The same settings as conftest's small_settings, as the environment a user would set."""
    return {
        "GENSERVE_MODELS__DIR": str(demo_models),
        "GENSERVE_STORAGE__READ_ROOTS": f"[{data_root}]",
        "GENSERVE_STORAGE__WRITE_ROOTS": f"[{data_root / 'outputs'}]",
        "GENSERVE_STORAGE__DEFAULT_OUTPUT_DIR": str(data_root / "outputs"),
        "GENSERVE_PIPELINE__MEGAPIXELS": str(SMALL_MP),
        "GENSERVE_PIPELINE__VAE_REFERENCE_MEGAPIXELS": str(SMALL_MP),
        "GENSERVE_PIPELINE__VISION_REFERENCE_MEGAPIXELS": str(VISION_MP),
        "COLUMNS": "200",
    }


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.app, args, env=env or {"COLUMNS": "200"}, prog_name="genserve")


def run_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run a pipeline command that must succeed; its whole stdout must be one JSON object."""
    result = invoke(args, env)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def run_error(args: list[str], env: dict[str, str], exit_code: int, error_code: str) -> dict[str, Any]:
    result = invoke(args, env)
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    body = json.loads(result.stdout)
    assert body["status"] == "error" and body["error_code"] == error_code
    assert set(body) >= {"request_id", "error_message", "timestamp"}
    lines = result.stderr.strip().splitlines()
    assert f"genserve: {error_code}: " in lines[-1] and body["error_message"] in lines[-1]
    return body


def console_script() -> Path:
    """The installed ``genserve`` script beside this interpreter (the project's venv)."""
    script = Path(sys.executable).with_name("genserve")
    return script if script.exists() else REPO / ".venv" / "bin" / "genserve"


def encode_inputs(env: dict[str, str], data_root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """encode-latent and encode-text on the demo images: their two responses."""
    person, cloth = data_root / "inputs" / "person.png", data_root / "inputs" / "cloth.png"
    latent = run_json(["encode-latent", "--image-path", str(person)], env)
    text = run_json(
        ["encode-text", "--image1-path", str(person), "--image2-path", str(cloth), "--prompt", PROMPT], env
    )
    return latent, text


# -- help and options ------------------------------------------------------------------------------

EXPECTED_OPTIONS = {
    "encode-latent": "--image-path --vae-model-name --output-dir --upscale-method --megapixels",
    "encode-text": "--image1-path --image2-path --image3-path --prompt --negative-prompt --clip-model-name "
    "--vae-model-name --output-dir --vae-reference-megapixels --vision-reference-megapixels",
    "sample": "--positive-encoding-file --negative-encoding-file --latent-file --unet-model-name "
    "--lora-model-name --lora-strength --seed --steps --cfg --sampler-name --scheduler --denoise --shift "
    "--strength --output-dir",
    "decode": "--latent-file --vae-model-name --output-filename --output-dir --output-format",
    "edit": "--image1-path --image2-path --image3-path --prompt --negative-prompt --vae-model-name "
    "--clip-model-name --unet-model-name --lora-model-name --lora-strength --seed --steps --cfg "
    "--sampler-name --scheduler --denoise --shift --strength --upscale-method --megapixels "
    "--vae-reference-megapixels --vision-reference-megapixels --output-filename --output-dir --output-format",
    "models demo": "--dir --images-dir --seed --force --if-missing",
    "models list": "--json",
    "devices": "--json",
    "serve": "--quiet",
}


@pytest.mark.parametrize("command", sorted(EXPECTED_OPTIONS))
def test_help_explains_each_command_and_lists_its_options(command: str) -> None:
    result = invoke([*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    text = ANSI.sub("", result.stdout)
    expected = EXPECTED_OPTIONS[command].split()
    if command in SERVICE_OF:
        expected += ["--request-id", "--json-input", "--quiet"]
    for option in expected:
        assert re.search(rf"{option}(?![\w-])", text), f"{command} --help lacks {option}"
    assert "Usage: genserve " + command in text
    summary = text.split("Usage: genserve " + command, 1)[1].split("Options")[0]
    assert len(summary.split()) >= 5, f"{command} --help does not explain the command"


def test_top_level_help_lists_commands_and_config() -> None:
    text = ANSI.sub("", invoke(["--help"]).stdout)
    for name in ("--config", "encode-latent", "encode-text", "sample", "decode", "edit", "models", "devices"):
        assert name in text
    assert "not built yet" in ANSI.sub("", invoke(["serve", "--help"]).stdout)


@pytest.mark.parametrize("command", sorted(SERVICE_OF))
def test_every_request_field_has_exactly_one_option(command: str) -> None:
    """The options are the request's fields, nested sampling parameters flattened."""
    click_command = get_command(cli.app).commands[command]  # type: ignore[attr-defined]
    options = {p.name for p in click_command.params} - COMMON
    model = SERVICES[SERVICE_OF[command]].request_model
    fields: set[str] = set()
    for name, info in model.model_fields.items():
        if name in set(NESTED.values()):
            fields |= set(info.annotation.model_fields)  # type: ignore[union-attr]
        else:
            fields.add(name)
    assert options == fields


def test_request_body_sends_only_given_options_and_overrides_the_json(tmp_path: Path) -> None:
    base = {"latent_file": "a.pt", "sampling_params": {"seed": 7, "steps": 9}}
    given = {"steps": 2, "cfg": 0.0, "sampler_name": None, "shift": None, "unet_model_name": None}
    body = request_body(base, given)
    assert body == {"latent_file": "a.pt", "sampling_params": {"seed": 7, "steps": 2, "cfg": 0.0}}
    assert base["sampling_params"] == {"seed": 7, "steps": 9}  # the JSON input is not modified
    (tmp_path / "here.png").write_bytes(b"x")
    paths = request_body({}, {"image_path": "here.png", "output_dir": "elsewhere"})
    assert paths == {"image_path": str(tmp_path / "here.png"), "output_dir": "elsewhere"}


# -- models and devices ----------------------------------------------------------------------------


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


# -- pipeline ------------------------------------------------------------------------------------


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


# -- errors ----------------------------------------------------------------------------------------


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
    import genserve.runtime

    def broken(*_: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(genserve.runtime, "build_runtime", broken)
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


# -- serve -----------------------------------------------------------------------------------------


@pytest.fixture
def no_demo_images(data_root: Path) -> Iterator[Path]:
    for image in (data_root / "inputs").iterdir():
        image.unlink()
    yield data_root / "inputs"


def test_serve_says_it_is_not_a_server_and_runs_one_real_edit(
    env: dict[str, str], no_demo_images: Path
) -> None:
    result = invoke(["serve"], env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "not built yet" in result.stderr and "genserve edit --image1-path" in result.stderr
    assert (no_demo_images / "person.png").is_file()  # the demo images were written for the edit
    response = json.loads(result.stdout)
    assert response["status"] == "success" and Path(response["image_file_path"]).is_file()
