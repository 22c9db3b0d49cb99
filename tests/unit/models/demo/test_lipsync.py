"""The demo lip-sync set: real ONNX interfaces, batch-independent outputs, consistent frames and boxes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from genserve.models.demo.lipsync import (
    AUDIO_ENCODER_FILE,
    CROP_RECTS_FILE,
    FRAMES_DIR,
    MODEL_FILE,
    build_lipsync_demo,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lipsync") / "demo"
    build_lipsync_demo(folder)
    return folder


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def lipsync_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input": rng.random((batch, 6, 320, 320), dtype=np.float32),
        "audio": np.tanh(rng.standard_normal((batch, 32, 16, 16))).astype(np.float32),
    }


def test_lipsync_model_has_the_real_names_and_shapes(demo: Path) -> None:
    model = session(demo / MODEL_FILE)
    assert [(i.name, i.shape, i.type) for i in model.get_inputs()] == [
        ("input", ["batch", 6, 320, 320], "tensor(float)"),
        ("audio", ["batch", 32, 16, 16], "tensor(float)"),
    ]
    assert [(o.name, o.shape, o.type) for o in model.get_outputs()] == [
        ("output", ["batch", 3, 320, 320], "tensor(float)")
    ]


def test_audio_encoder_has_the_real_names_and_shapes(demo: Path) -> None:
    encoder = session(demo / AUDIO_ENCODER_FILE)
    assert [(i.name, i.shape) for i in encoder.get_inputs()] == [("mel", ["batch", 1, 80, 16])]
    assert [(o.name, o.shape) for o in encoder.get_outputs()] == [("embedding", ["batch", 512])]
    for n in (1, 4, 16):
        mel = np.random.default_rng(n).uniform(-4, 4, (n, 1, 80, 16)).astype(np.float32)
        [embedding] = encoder.run(None, {"mel": mel})
        assert embedding.shape == (n, 512) and embedding.dtype == np.float32
        assert np.abs(embedding).max() <= 1.0
    quiet, loud = (np.full((1, 1, 80, 16), v, np.float32) for v in (-4.0, 2.0))
    assert np.abs(encoder.run(None, {"mel": quiet})[0] - encoder.run(None, {"mel": loud})[0]).mean() > 0.05


@pytest.mark.parametrize("batch", [1, 4])
def test_lipsync_model_runs_with_outputs_in_0_1(demo: Path, batch: int) -> None:
    [output] = session(demo / MODEL_FILE).run(None, lipsync_inputs(batch, seed=batch))
    assert output.shape == (batch, 3, 320, 320) and output.dtype == np.float32
    assert output.min() >= 0.0 and output.max() <= 1.0
    assert output.std() > 0.05  # a picture, not a flat field


def test_batch_items_are_independent(demo: Path) -> None:
    """Merging requests into one run must change nothing: item i depends only on input i."""
    model = session(demo / MODEL_FILE)
    inputs = lipsync_inputs(4, seed=7)
    [together] = model.run(None, inputs)
    for i in range(4):
        [alone] = model.run(None, {name: value[i : i + 1] for name, value in inputs.items()})
        np.testing.assert_allclose(alone[0], together[i], rtol=0, atol=1e-6)


def test_different_audio_gives_different_frames(demo: Path) -> None:
    model = session(demo / MODEL_FILE)
    inputs = lipsync_inputs(2, seed=8)
    other = dict(inputs, audio=lipsync_inputs(2, seed=9)["audio"])
    [first] = model.run(None, inputs)
    [second] = model.run(None, other)
    assert np.abs(first - second).mean() * 255 > 2  # several grey levels, visible after JPEG
    other_image = dict(inputs, input=lipsync_inputs(2, seed=10)["input"])
    assert np.abs(model.run(None, other_image)[0] - first).mean() * 255 > 2


def test_frames_and_crop_boxes_match(demo: Path) -> None:
    frames = sorted((demo / FRAMES_DIR).iterdir())
    assert [p.name for p in frames] == [f"frame_{i:04d}.png" for i in range(12)]
    boxes = json.loads((demo / CROP_RECTS_FILE).read_text())
    assert len(boxes) == len(frames)
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in frames]
    for image, (x1, y1, x2, y2) in zip(images, boxes, strict=True):
        assert image.shape == (360, 640, 3) and image.dtype == np.uint8
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360
        assert 150 <= x2 - x1 <= 200 and 150 <= y2 - y1 <= 200
    assert len({image.tobytes() for image in images}) == len(images)  # every frame differs
    assert len({tuple(box) for box in boxes}) > 1  # the face moves


def test_same_seed_same_files_other_seed_other_weights(tmp_path: Path) -> None:
    build_lipsync_demo(tmp_path / "a", seed=3, frames=2)
    build_lipsync_demo(tmp_path / "b", seed=3, frames=2)
    build_lipsync_demo(tmp_path / "c", seed=4, frames=2)
    names = [MODEL_FILE, AUDIO_ENCODER_FILE, CROP_RECTS_FILE, f"{FRAMES_DIR}/frame_0001.png"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / MODEL_FILE).read_bytes() != (tmp_path / "c" / MODEL_FILE).read_bytes()


def test_rebuilding_with_fewer_frames_drops_the_stale_ones(tmp_path: Path) -> None:
    build_lipsync_demo(tmp_path, frames=5)
    build_lipsync_demo(tmp_path, frames=2, width=320, height=240)
    assert sorted(p.name for p in (tmp_path / FRAMES_DIR).iterdir()) == ["frame_0000.png", "frame_0001.png"]
    assert len(json.loads((tmp_path / CROP_RECTS_FILE).read_text())) == 2
    assert cv2.imread(str(tmp_path / FRAMES_DIR / "frame_0001.png")).shape == (240, 320, 3)


def test_demo_output_composites_through_the_real_audio_path(demo: Path) -> None:
    """The set fits the server's pieces end to end: PCM -> features -> model -> JPEG frames."""
    from genserve.services.lipsync.audio import audio_features
    from genserve.services.lipsync.compositing import Compositor, decode_background

    encoder = session(demo / AUDIO_ENCODER_FILE)
    pcm = (0.3 * np.sin(np.arange(10_240) * 2 * np.pi * 220 / 16_000)).astype(np.float32).tobytes()
    features = audio_features(pcm, 16_000, 3, lambda mel: encoder.run(None, {"mel": mel})[0])
    images = lipsync_inputs(3, seed=11)["input"]
    [output] = session(demo / MODEL_FILE).run(None, {"input": images, "audio": features})
    backgrounds = [decode_background(p) for p in sorted((demo / FRAMES_DIR).iterdir())[:3]]
    boxes = [tuple(box) for box in json.loads((demo / CROP_RECTS_FILE).read_text())[:3]]
    with Compositor(workers=2) as compositor:
        jpegs = compositor.composite(output, backgrounds, boxes)
    assert [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR).shape for j in jpegs] == [
        (360, 640, 3)
    ] * 3
