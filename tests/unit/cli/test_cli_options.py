"""CLI options: help text, one option per request field, how the request body is built."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.main import get_command

from genserve.cli import commands as cli
from genserve.cli.options import NESTED, request_body
from genserve.services.builtin import SERVICES
from tests.unit.cli.conftest import ANSI, COMMON, SERVICE_OF, invoke

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
    "serve": "--host --port",
    "test": "--host --port --timeout",
    "file-worker": "",
    "kafka-worker": "",
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
    for name in (
        "--config",
        "encode-latent",
        "encode-text",
        "sample",
        "decode",
        "edit",
        "models",
        "devices",
        "serve",
    ):
        assert name in text
    assert "serve" in text and "127.0.0.1:8000" in ANSI.sub("", invoke(["serve", "--help"]).stdout)


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
