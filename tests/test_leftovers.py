"""The suite's own guard (tests/leftovers.py): a run whose test leaves a process running fails,
naming the process, and the process is stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]

LEAKY = """
import subprocess, sys
from pathlib import Path

def test_starts_a_server_and_forgets_it():
    process = subprocess.Popen(["sleep", "600"])
    (Path(__file__).parent / "pid").write_text(str(process.pid))

def test_stops_what_it_starts():
    process = subprocess.Popen(["sleep", "600"])
    process.terminate()
    process.wait()
"""


def run_inner(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(source)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.leftovers", "-p", "no:cacheprovider"]
    command += ["-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_process_left_running_fails_the_run_and_is_stopped(tmp_path: Path) -> None:
    done = run_inner(tmp_path, LEAKY)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    pid = int((tmp_path / "pid").read_text())
    assert f"pid {pid} " in done.stdout and "sleep 600" in done.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_run_that_stops_everything_passes(tmp_path: Path) -> None:
    done = run_inner(
        tmp_path, LEAKY.split("def test_starts")[0] + "def test_stops" + LEAKY.split("def test_stops")[1]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "processes left running" not in done.stdout
