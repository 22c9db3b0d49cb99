"""Schemathesis over every operation of the live /openapi.json (pipeline, admin, bridge, ComfyUI,
OpenAI): no generated request gets a 5xx, and no answer carries a server path or a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import LiveServer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error_or_a_server_path(
    server: LiveServer, tmp_path: Path
) -> None:
    operations = len(
        [op for ops in httpx.get(f"{server.url}/openapi.json").json()["paths"].values() for op in ops]
    )
    roots = [str(server.data), str(server.data.resolve()), str(REPO), "/work/", "/tmp/", sys.prefix]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "SCHEMATHESIS_HOOKS": "tests.security.schemathesis_checks",
        "HOSTILE_SERVER_ROOTS": os.pathsep.join(roots),
    }
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "not_a_server_error,no_server_path_or_traceback",
        "--max-examples",
        "40",
        "--seed",
        "20261123",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--continue-on-failure",
        "--no-color",
        "--report",
        "ndjson",
        "--report-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    report = done.stdout[-12000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    counts = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counts is not None, report
    assert int(counts.group(1)) == int(counts.group(2)) > 20 * operations, report
    tested = re.search(r"Operations:\s+(\d+) selected / (\d+) total", done.stdout)
    assert tested is not None and int(tested.group(1)) == int(tested.group(2)) == operations, report
