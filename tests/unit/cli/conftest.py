"""Shared by the CLI tests: an isolated folder, the small-size environment, runner helpers."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from genserve.cli import commands as cli
from tests.conftest import small_env

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
    return {**small_env(demo_models, data_root), "COLUMNS": "200"}


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
