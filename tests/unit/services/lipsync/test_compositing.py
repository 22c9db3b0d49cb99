"""Compositing lip-sync output onto background frames: placement, untouched backgrounds, order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.services.lipsync.compositing import Compositor, _to_uint8_bgr, decode_background

WIDTH, HEIGHT = 640, 360
BOX = (230, 90, 410, 270)  # 180 x 180, as a face box
# JPEG codes 16x16 blocks (4:2:0) independently, and chroma upsampling reaches into neighbours:
# beyond this margin around the box the output must decode exactly like the untouched background.
MARGIN = 32


@pytest.fixture
def compositor() -> Iterator[Compositor]:
    with Compositor(workers=2) as instance:
        yield instance


def background(seed: int = 0) -> np.ndarray:
    """A smooth gradient (JPEG-friendly) with a seeded tint, like a real video frame."""
    tint = np.random.default_rng(seed).integers(0, 80, size=3)
    x = np.linspace(0, 150, WIDTH)[None, :, None]
    y = np.linspace(0, 100, HEIGHT)[:, None, None]
    return np.clip(tint + x + y, 0, 255).astype(np.uint8)


def solid_outputs(colours: list[tuple[float, float, float]]) -> np.ndarray:
    """[B, 3, 320, 320] model outputs, each one flat BGR colour in 0..1."""
    return np.stack([np.broadcast_to(np.array(c, np.float32)[:, None, None], (3, 320, 320)) for c in colours])


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def jpeg_roundtrip(image: np.ndarray, quality: int = 75) -> np.ndarray:
    return decode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())


def outside_box(box: tuple[int, int, int, int], margin: int) -> np.ndarray:
    x1, y1, x2, y2 = box
    mask = np.ones((HEIGHT, WIDTH), bool)
    mask[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin] = False
    return mask


def test_frame_is_the_background_with_the_output_in_its_box(compositor: Compositor) -> None:
    bg = background()
    colour = (0.2, 0.5, 0.8)
    [jpeg] = compositor.composite(solid_outputs([colour]), [bg], [BOX])
    frame = decode(jpeg)
    assert frame.shape == bg.shape
    expected_outside = jpeg_roundtrip(bg)
    mask = outside_box(BOX, MARGIN)
    assert np.abs(frame[mask].astype(int) - expected_outside[mask]).max() <= 2
    x1, y1, x2, y2 = BOX
    inner = frame[y1 + 16 : y2 - 16, x1 + 16 : x2 - 16].reshape(-1, 3).astype(int)
    assert np.abs(inner - np.array([51, 128, 204])).max() <= 6  # the output's colour, x255 rounded
    assert np.abs(frame[y1:y2, x1:x2].astype(int) - bg[y1:y2, x1:x2]).mean() > 40


def test_background_array_is_never_modified(compositor: Compositor) -> None:
    bg = background()
    before = bg.copy()
    compositor.composite(solid_outputs([(0.0, 0.0, 0.0)] * 3), [bg, bg, bg], [BOX] * 3)
    assert np.array_equal(bg, before)


def test_order_is_kept_across_the_thread_pool() -> None:
    count = 16
    colours = [(i / count, 1 - i / count, (i % 4) / 4) for i in range(count)]
    backgrounds = [background(seed) for seed in range(count)]
    boxes = [(100 + 10 * i, 50 + 5 * i, 280 + 10 * i, 230 + 5 * i) for i in range(count)]
    with Compositor(workers=4) as compositor:
        frames = [decode(jpeg) for jpeg in compositor.composite(solid_outputs(colours), backgrounds, boxes)]
    for i, frame in enumerate(frames):
        x1, y1, x2, y2 = boxes[i]
        centre = frame[(y1 + y2) // 2, (x1 + x2) // 2].astype(int)
        assert np.abs(centre - np.round(np.array(colours[i]) * 255)).max() <= 6, i
        mask = outside_box(boxes[i], MARGIN)
        assert np.abs(frame[mask].astype(int) - jpeg_roundtrip(backgrounds[i])[mask]).max() <= 2, i


def test_one_worker_and_many_give_the_same_bytes() -> None:
    outputs = np.random.default_rng(3).random((5, 3, 320, 320), dtype=np.float32)
    backgrounds = [background(seed) for seed in range(5)]
    with Compositor(workers=1) as serial, Compositor(workers=3) as parallel:
        assert serial.composite(outputs, backgrounds, [BOX] * 5) == parallel.composite(
            outputs, backgrounds, [BOX] * 5
        )


def test_jpeg_quality_is_applied() -> None:
    outputs = np.random.default_rng(4).random((1, 3, 320, 320), dtype=np.float32)
    with Compositor(workers=1, jpeg_quality=95) as high, Compositor(workers=1, jpeg_quality=30) as low:
        assert len(high.composite(outputs, [background()], [BOX])[0]) > len(
            low.composite(outputs, [background()], [BOX])[0]
        )


def test_a_box_past_the_edge_is_clipped_to_the_frame(compositor: Compositor) -> None:
    bg = background()
    [jpeg] = compositor.composite(solid_outputs([(1.0, 1.0, 1.0)]), [bg], [(550, 300, 700, 420)])
    frame = decode(jpeg)
    assert frame.shape == bg.shape
    assert frame[320:, 580:].min() >= 245  # the visible part of the box is white


@pytest.mark.parametrize("box", [(100, 100, 100, 200), (700, 0, 800, 100), (300, 200, 200, 300)])
def test_an_empty_box_names_the_frame(compositor: Compositor, box: tuple[int, int, int, int]) -> None:
    outputs = solid_outputs([(0.5, 0.5, 0.5)] * 2)
    with pytest.raises(GenserveError) as error:
        compositor.composite(outputs, [background(), background()], [BOX, box])
    assert error.value.code is ErrorCode.INTERNAL
    assert "frame 1" in error.value.message


def test_mismatched_inputs_are_refused(compositor: Compositor) -> None:
    with pytest.raises(GenserveError, match="2 model outputs but 1 backgrounds"):
        compositor.composite(solid_outputs([(0, 0, 0)] * 2), [background()], [BOX, BOX])
    with pytest.raises(GenserveError, match="expected"):
        compositor.composite(np.zeros((1, 4, 320, 320), np.float32), [background()], [BOX])


def test_conversion_rounds_and_saturates() -> None:
    values = np.array([-0.5, 0.0, 0.2, 0.5, 1.0, 1.7], np.float32)
    planes = np.broadcast_to(values, (3, 1, 6)).copy()
    planes[1] *= 0.5  # channels stay apart
    converted = _to_uint8_bgr(planes)
    assert converted.shape == (1, 6, 3) and converted.dtype == np.uint8
    assert converted[0, :, 0].tolist() == [0, 0, 51, 128, 255, 255]
    assert converted[0, :, 1].tolist() == [0, 0, 26, 64, 128, 217]


def test_decode_background_reads_png_and_jpg_as_bgr(tmp_path: Path) -> None:
    bg = background()
    cv2.imwrite(str(tmp_path / "frame_0000.png"), bg)
    cv2.imwrite(str(tmp_path / "frame_0001.jpg"), bg)
    assert np.array_equal(decode_background(tmp_path / "frame_0000.png"), bg)
    jpg = decode_background(tmp_path / "frame_0001.jpg")
    assert jpg.shape == bg.shape and jpg.dtype == np.uint8
    assert np.abs(jpg.astype(int) - bg).mean() < 2


def test_decode_background_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(GenserveError) as error:
        decode_background(tmp_path / "missing.png")
    assert error.value.code is ErrorCode.NOT_FOUND and "missing.png" in error.value.message
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(GenserveError) as error:
        decode_background(tmp_path / "broken.png")
    assert error.value.code is ErrorCode.INTERNAL and "broken.png" in error.value.message
