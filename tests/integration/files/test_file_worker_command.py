"""``genserve file-worker`` as a process: answers a dropped request, stops cleanly on SIGTERM,
and refuses an output folder outside the write roots at start-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import small_env


def genserve() -> str:
    return str(Path(sys.executable).with_name("genserve"))


def environment(demo_models: Path, data_root: Path, output_dir: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    return {
        **base,
        **small_env(demo_models, data_root),
        "GENSERVE_FILES__INPUT_DIR": str(data_root / "drop"),
        "GENSERVE_FILES__OUTPUT_DIR": str(output_dir),
        "GENSERVE_FILES__POLL_INTERVAL_S": "0.1",
    }


def test_file_worker_answers_and_stops_on_sigterm(demo_models: Path, data_root: Path, tmp_path: Path) -> None:
    out = data_root / "outputs" / "drop"
    env = environment(demo_models, data_root, out)
    worker = subprocess.Popen(
        [genserve(), "file-worker"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        drop = data_root / "drop"
        deadline = time.monotonic() + 60
        while not (drop / "claimed").is_dir():  # made at start
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        temp = drop / "writing.tmp"
        temp.write_text(
            json.dumps({"service": "latent_encoder", "input": {"image_path": "inputs/person.png"}})
        )
        temp.rename(drop / "request_w1.json")
        answer = out / "response_w1.json"
        while not answer.exists():
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert json.loads(answer.read_text())["status"] == "success"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.stderr is not None and "Traceback" not in worker.stderr.read()


def test_output_dir_outside_the_write_roots_stops_start_up(
    demo_models: Path, data_root: Path, tmp_path: Path
) -> None:
    env = environment(demo_models, data_root, tmp_path / "elsewhere")
    done = subprocess.run(
        [genserve(), "file-worker"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "files.output_dir" in done.stderr and "Traceback" not in done.stderr
