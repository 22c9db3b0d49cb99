"""Property-based run of schemathesis against the live /openapi.json: no input gives a 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import LiveServer


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(server: LiveServer, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("schemathesis")
    command = [
        str(st),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--seed",
        "20261123",
        "--phases",
        "examples,coverage,fuzzing",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--no-color",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    counts = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counts is not None, report
    assert int(counts.group(1)) == int(counts.group(2)) > 500, report  # every operation was exercised
