"""benchmarks/gpu_full_size.py stays runnable: its --smoke mode runs the same code (random weights
written as a ComfyUI fp8 file, loaded in every memory mode, genserve's sampling against a bare
loop) on a tiny config on the CPU. Its figures mean nothing; a GPU run gives the real ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_full_size.py"), "--smoke", "--pairs", "1",
               "--steps", "1", "--work", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    for mode in ("resident", "offloaded", "streamed"):  # each forced mode was the one it got
        assert f"  {mode:<24} got {mode:<9}" in done.stdout, done.stdout
    assert "sampling step genserve / bare loop" in done.stdout
    assert (
        tmp_path / "models" / "diffusion_models" / "qwen_image_edit_2509_fp8_e4m3fn.safetensors"
    ).is_file()
