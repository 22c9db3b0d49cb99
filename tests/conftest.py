"""Shared fixtures: demo models built once per test session, small pipeline sizes, a runtime.

The demo models are built into a cache folder (``.genserve-cache/`` at the repo root) and reused
across sessions while their builder is unchanged, so the suite stays fast on a fresh clone too.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from genserve.app.runtime import Runtime, build_runtime
from genserve.config import Settings, load_settings
from genserve.models.demo import pipeline as demo

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".genserve-cache"
# The run fails when a process it started outlives it (tests/leftovers.py).
pytest_plugins = ["tests.leftovers"]

SMALL_MP = 128 * 128 / 1_000_000  # 128x128 output and VAE references
VISION_MP = 64 * 64 / 1_000_000


def _builder_digest() -> str:
    from genserve.models.demo import controlnets as controlnet_demo
    from genserve.models.demo import layered as layered_demo
    from genserve.models.demo import lipsync as lipsync_demo
    from genserve.models.demo import llm as llm_demo
    from genserve.models.demo import vision_chat as vision_chat_demo

    sources = b"".join(
        Path(m.__file__).read_bytes()
        for m in (demo, lipsync_demo, llm_demo, controlnet_demo, vision_chat_demo, layered_demo)
    )
    return hashlib.sha1(sources).hexdigest()[:12]


@pytest.fixture(scope="session")
def demo_models() -> Path:
    """The demo models folder (built once; rebuilt when demo.py, lipsync_demo.py or llm_demo.py changes)."""
    root = CACHE / f"demo-{_builder_digest()}"
    if not demo.demo_present(root / "models"):
        shutil.rmtree(root, ignore_errors=True)
        demo.build_demo(root / "models", images_dir=root / "images")
    return root / "models"


@pytest.fixture(scope="session")
def demo_images(demo_models: Path) -> Path:
    return demo_models.parent / "images"


@pytest.fixture
def data_root(tmp_path: Path, demo_images: Path) -> Path:
    """A read root holding the demo images under inputs/, with outputs/ as the write root."""
    root = tmp_path / "data"
    (root / "inputs").mkdir(parents=True)
    (root / "outputs").mkdir()
    for image in demo_images.iterdir():
        shutil.copy(image, root / "inputs" / image.name)
    return root


def small_env(models_dir: Path, data_root: Path) -> dict[str, str]:
    """The test settings as the GENSERVE_* variables a user would set: the demo models, the data
    root's inputs/ and outputs/, and small pipeline sizes."""
    return {
        "GENSERVE_MODELS__DIR": str(models_dir),
        "GENSERVE_STORAGE__READ_ROOTS": f"[{data_root}]",
        "GENSERVE_STORAGE__WRITE_ROOTS": f"[{data_root / 'outputs'}]",
        "GENSERVE_STORAGE__DEFAULT_OUTPUT_DIR": str(data_root / "outputs"),
        "GENSERVE_PIPELINE__MEGAPIXELS": str(SMALL_MP),
        "GENSERVE_PIPELINE__VAE_REFERENCE_MEGAPIXELS": str(SMALL_MP),
        "GENSERVE_PIPELINE__VISION_REFERENCE_MEGAPIXELS": str(VISION_MP),
        "GENSERVE_WORKFLOWS__INPUT_DIR": str(data_root / "inputs"),
        "GENSERVE_WORKFLOWS__OUTPUT_DIR": str(data_root / "outputs" / "workflows"),
        "GENSERVE_BRIDGE__WORKFLOWS_DIR": str(data_root / "bridge" / "workflows"),
        "GENSERVE_BRIDGE__ALIAS_FILE": str(data_root / "bridge" / "workflows" / "workflow_alias.json"),
        "GENSERVE_BRIDGE__JOBS_DB": str(data_root / "bridge" / "jobs.sqlite3"),
        "GENSERVE_BRIDGE__RESULTS_DIR": str(data_root / "bridge" / "results"),
        "GENSERVE_GRPC__PORTS": "[0]",  # a free port, never the default 50053
        "GENSERVE_COMFY__PORT": "0",  # a free port, never ComfyUI's 8188
        "GENSERVE_COMFY__USER_DIR": str(data_root / "comfy" / "users"),
        "GENSERVE_AUTH__KEYS_FILE": str(data_root.parent / "auth" / "keys.json"),  # none: open
    }


def small_settings(models_dir: Path, data_root: Path, **env: str) -> Settings:
    return load_settings(environ={**small_env(models_dir, data_root), **env})


@pytest.fixture
def settings(demo_models: Path, data_root: Path) -> Settings:
    return small_settings(demo_models, data_root)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    with build_runtime(settings) as rt:
        yield rt
