"""lipsync request validation: the spec's messages, in the spec's order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.models.lipsync_registry import LipsyncRegistry
from genserve.services.lipsync.service import FRAME_VALUES, LipsyncRequest, validate

AUDIO = np.zeros(10_240, np.float32).tobytes()  # 640 ms at 16 kHz


@pytest.fixture
def catalog(tmp_path: Path) -> LipsyncRegistry:
    folder = tmp_path / "lipsync" / "demo"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")  # validation only looks the id up
    return LipsyncRegistry(tmp_path, {})


def frames(batch: int, fill: float = 0.5) -> bytes:
    return np.full(batch * FRAME_VALUES, fill, np.float32).tobytes()


def request(**fields: Any) -> LipsyncRequest:
    values: dict[str, Any] = {"model_id": "demo", "batch_size": 2, "raw_audio": AUDIO}
    values.update(fields)
    values.setdefault("visual_frames", frames(values["batch_size"] if 1 <= values["batch_size"] <= 32 else 1))
    return LipsyncRequest(**values)


def refused(
    req: LipsyncRequest,
    catalog: LipsyncRegistry,
    code: ErrorCode = ErrorCode.INVALID_INPUT,
    max_audio_s: float | None = None,
) -> str:
    with pytest.raises(GenserveError) as info:
        validate(req, catalog, max_audio_s)
    assert info.value.code is code, info.value
    return info.value.message


def test_a_valid_request_gives_the_frames_as_an_array(catalog: LipsyncRegistry) -> None:
    req = request(batch_size=3, start_frame_idx=1000)
    visual = validate(req, catalog)
    assert visual.shape == (3, 6, 320, 320) and visual.dtype == np.float32
    assert float(visual[2, 5, 319, 319]) == 0.5
    assert not visual.flags.owndata  # a view of the request's bytes, no copy
    assert validate(request(raw_audio=b"", audio_features=b"\0" * 4), catalog).shape[0] == 2


def test_model_id_is_required(catalog: LipsyncRegistry) -> None:
    assert refused(request(model_id=""), catalog) == "model_id is required"


@pytest.mark.parametrize("batch", [0, 33, -1])
def test_batch_size_must_be_1_to_32(catalog: LipsyncRegistry, batch: int) -> None:
    message = refused(request(batch_size=batch), catalog)
    assert message.startswith("batch_size must be 1-32") and f"(got {batch})" in message


@pytest.mark.parametrize("batch", [1, 32])
def test_batch_size_limits_are_allowed(catalog: LipsyncRegistry, batch: int) -> None:
    assert validate(request(batch_size=batch), catalog).shape[0] == batch


@pytest.mark.parametrize("visual", [b"", frames(1), frames(3), frames(2)[:-4], frames(2) + b"\0"])
def test_invalid_visual_frames_size(catalog: LipsyncRegistry, visual: bytes) -> None:
    message = refused(request(visual_frames=visual), catalog)
    assert message.startswith("Invalid visual frames size")
    assert f"got {len(visual)} bytes, expected {2 * FRAME_VALUES * 4}" in message


def test_negative_start_frame_is_refused(catalog: LipsyncRegistry) -> None:
    assert "start_frame_idx must be >= 0" in refused(request(start_frame_idx=-1), catalog)


def test_raw_audio_is_required(catalog: LipsyncRegistry) -> None:
    assert refused(request(raw_audio=b""), catalog).startswith("raw_audio is required")


def test_raw_audio_and_audio_features_together_are_refused(catalog: LipsyncRegistry) -> None:
    message = refused(request(audio_features=b"\0" * 4), catalog)
    assert "raw_audio" in message and "audio_features" in message and "not both" in message


@pytest.mark.parametrize("model_id", ["x", "../demo", ".hidden", "lipsync/demo"])
def test_unknown_model(catalog: LipsyncRegistry, model_id: str) -> None:
    message = refused(request(model_id=model_id), catalog, ErrorCode.MODEL_NOT_FOUND)
    assert message == f"Model '{model_id}' not found"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_visual_frames_are_refused(catalog: LipsyncRegistry, bad: float) -> None:
    values = np.full((2, 6, 320, 320), 0.5, np.float32)
    values[1, 3, 16, 32] = bad
    message = refused(request(visual_frames=values.tobytes()), catalog)
    assert "NaN or infinite" in message


def test_checks_come_in_the_spec_order(catalog: LipsyncRegistry) -> None:
    everything_wrong = LipsyncRequest(model_id="", batch_size=0, visual_frames=b"", start_frame_idx=-1)
    assert refused(everything_wrong, catalog) == "model_id is required"
    unknown_model_bad_batch = request(model_id="x", batch_size=40)
    assert refused(unknown_model_bad_batch, catalog).startswith("batch_size must be 1-32")


def test_raw_audio_longer_than_the_limit_is_refused_before_decoding(catalog: LipsyncRegistry) -> None:
    three_seconds_of_nan = np.full(48_000, np.nan, np.float32).tobytes()  # never decoded: no NaN error
    message = refused(request(raw_audio=three_seconds_of_nan), catalog, max_audio_s=2.0)
    assert message.startswith("raw_audio: 3.00 s of audio (48000 samples at 16000 Hz)")
    assert "2 s limit (lipsync.max_audio_s)" in message
    assert validate(request(raw_audio=three_seconds_of_nan, sample_rate=48_000), catalog, 2.0).shape[0] == 2
    assert validate(request(raw_audio=three_seconds_of_nan), catalog).shape[0] == 2  # no limit given
