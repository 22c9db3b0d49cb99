"""The lip-sync audio path: PCM bytes -> mel spectrogram -> windows -> [B, 32, 16, 16] features."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from genserve.errors import ErrorCode, GenserveError
from genserve.services.lipsync import audio

SAMPLES_640_MS = 10_240


def tone(frequency: float, seconds: float = 0.64, rate: int = audio.SAMPLE_RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def fake_encoder(windows: np.ndarray) -> np.ndarray:
    """Stands in for the ONNX encoder: a fixed projection, so features follow the audio."""
    projection = np.random.default_rng(0).standard_normal((80 * 16, audio.EMBED_DIM)).astype(np.float32)
    return np.tanh(windows.reshape(len(windows), -1) @ projection / 200.0)


def assert_invalid(error: pytest.ExceptionInfo[GenserveError], field: str) -> None:
    assert error.value.code is ErrorCode.INVALID_INPUT
    assert field in error.value.message


def test_shapes_for_640_ms_at_16_khz() -> None:
    samples = tone(440.0)
    assert samples.shape == (SAMPLES_640_MS,)
    mel = audio.mel_spectrogram(samples)
    assert mel.shape == (audio.NUM_MELS, 1 + SAMPLES_640_MS // audio.HOP_SIZE)
    assert mel.dtype == np.float32
    steps = audio.video_steps(SAMPLES_640_MS)
    assert steps == 16
    windows = audio.mel_windows(mel, steps)
    assert windows.shape == (16, 1, 80, 16) and windows.dtype == np.float32
    seen: list[tuple[int, ...]] = []

    def encode(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return fake_encoder(batch)

    features = audio.audio_features(samples.tobytes(), 16_000, 25, encode)
    assert seen == [(16, 1, 80, 16)]
    assert features.shape == (25, 32, 16, 16) and features.dtype == np.float32


@pytest.mark.parametrize("kind", ["silence", "noise", "loud"])
def test_values_stay_within_plus_minus_4(kind: str) -> None:
    rng = np.random.default_rng(1)
    samples = {
        "silence": np.zeros(SAMPLES_640_MS, np.float32),
        "noise": (0.3 * rng.standard_normal(SAMPLES_640_MS)).astype(np.float32),
        "loud": np.sign(rng.standard_normal(SAMPLES_640_MS)).astype(np.float32) * 50,
    }[kind]
    mel = audio.mel_spectrogram(samples)
    assert mel.min() >= -audio.MAX_ABS_VALUE and mel.max() <= audio.MAX_ABS_VALUE
    if kind == "silence":
        assert np.all(mel == -audio.MAX_ABS_VALUE)  # the -100 dB floor maps to -4


def test_a_440_hz_tone_lights_up_its_mel_band() -> None:
    mel = audio.mel_spectrogram(tone(440.0))
    loudest = int(mel[:, 5:-5].mean(axis=1).argmax())
    centres = librosa.mel_frequencies(n_mels=audio.NUM_MELS + 2, fmin=audio.FMIN, fmax=audio.FMAX)[1:-1]
    assert abs(loudest - int(np.abs(centres - 440.0).argmin())) <= 1
    assert mel[loudest].mean() > mel[60:].mean() + 2.0  # far above the high bands


def test_48_khz_is_resampled_to_the_16_khz_result() -> None:
    at_16k = audio.mel_spectrogram(tone(440.0))
    resampled = audio.resample(tone(440.0, rate=48_000), 48_000)
    assert resampled.shape == (SAMPLES_640_MS,) and resampled.dtype == np.float32
    at_48k = audio.mel_spectrogram(resampled)
    assert at_48k.shape == at_16k.shape
    # Same sound, same spectrum (edges aside, where the resampler's filter settles).
    assert np.abs(at_48k[:, 2:-2] - at_16k[:, 2:-2]).mean() < 0.05
    features = audio.audio_features(tone(440.0, rate=48_000).tobytes(), 48_000, 8, fake_encoder)
    assert features.shape == (8, 32, 16, 16)


def test_default_and_native_rates_pass_through_unchanged() -> None:
    samples = tone(300.0)
    assert audio.resample(samples, 0) is samples
    assert audio.resample(samples, 16_000) is samples


@pytest.mark.parametrize("rate", [-1, 100, 7_999, 192_001, 1_000_000])
def test_unsupported_sample_rates_are_refused(rate: int) -> None:
    with pytest.raises(GenserveError) as error:
        audio.resample(tone(300.0), rate)
    assert_invalid(error, "sample_rate")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 5,
        np.array([0.1, np.nan, 0.2], np.float32).tobytes(),
        np.array([0.1, np.inf], np.float32).tobytes(),
    ],
    ids=["empty", "odd-size", "nan", "inf"],
)
def test_bad_pcm_is_refused_naming_raw_audio(data: bytes) -> None:
    with pytest.raises(GenserveError) as error:
        audio.decode_pcm(data)
    assert_invalid(error, "raw_audio")
    with pytest.raises(GenserveError) as error:
        audio.audio_features(data, 16_000, 4, fake_encoder)
    assert_invalid(error, "raw_audio")


def test_decode_pcm_reads_little_endian_float32_without_copying() -> None:
    data = np.array([0.25, -0.5, 1.0], dtype="<f4").tobytes()
    samples = audio.decode_pcm(data)
    assert samples.dtype == np.float32
    assert samples.tolist() == [0.25, -0.5, 1.0]
    assert samples.base is data  # a view of the request bytes


def test_mel_windows_start_every_3_2_frames_and_pad_with_the_last_frame() -> None:
    mel = np.tile(np.arange(20, dtype=np.float32), (80, 1))  # column j holds j
    windows = audio.mel_windows(mel, 4)
    assert windows.shape == (4, 1, 80, 16)
    for t in range(4):
        start = int(80 / 25 * t)
        expected = np.minimum(np.arange(start, start + 16), 19)  # past the end: the last column
        assert np.array_equal(windows[t, 0, 0], expected)
        assert np.array_equal(windows[t, 0, 79], expected)


def test_video_steps_count_40_ms_steps() -> None:
    assert audio.video_steps(SAMPLES_640_MS) == 16
    assert audio.video_steps(SAMPLES_640_MS + 1) == 17  # a partial step still has audio
    assert audio.video_steps(1) == 1
    assert audio.video_steps(0) == 1


def test_frame_features_take_16_neighbours_clamped_to_the_audio() -> None:
    steps = 16
    embeddings = np.repeat(np.arange(steps, dtype=np.float32)[:, None], audio.EMBED_DIM, axis=1)
    features = audio.frame_features(embeddings, 25)
    assert features.shape == (25, 32, 16, 16)
    per_step = features.reshape(25, audio.CONTEXT, audio.EMBED_DIM)
    assert np.all(per_step == per_step[:, :, :1])  # each 512-block is one whole step's vector
    used = per_step[:, :, 0].astype(int)
    for frame in range(25):
        expected = np.clip(np.arange(frame - 8, frame + 8), 0, steps - 1)
        assert used[frame].tolist() == expected.tolist()
    assert used[0].tolist() == [0] * 9 + list(range(1, 8))
    assert used[24].tolist() == [15] * 16  # past the 640 ms of audio: the last context repeats


def test_frame_features_keep_vector_order_inside_each_step() -> None:
    embeddings = np.arange(3 * audio.EMBED_DIM, dtype=np.float32).reshape(3, audio.EMBED_DIM)
    flat = audio.frame_features(embeddings, 1).reshape(-1)
    # Frame 0 context: steps -8..7 clamped to 0..2 -> nine times step 0, once step 1, six times step 2.
    expected = np.concatenate([embeddings[s] for s in [0] * 9 + [1] + [2] * 6])
    assert np.array_equal(flat, expected)


def test_an_encoder_with_the_wrong_output_shape_is_an_internal_error() -> None:
    with pytest.raises(GenserveError) as error:
        audio.audio_features(tone(300.0).tobytes(), 16_000, 4, lambda w: np.zeros((len(w), 256), np.float32))
    assert error.value.code is ErrorCode.INTERNAL


def test_different_audio_gives_different_features() -> None:
    low = audio.audio_features(tone(200.0).tobytes(), 16_000, 4, fake_encoder)
    high = audio.audio_features(tone(2_000.0).tobytes(), 16_000, 4, fake_encoder)
    assert np.abs(low - high).mean() > 0.01


def test_precomputed_features_accept_exactly_one_batch() -> None:
    values = np.random.default_rng(2).standard_normal((3, 32, 16, 16)).astype(np.float32)
    features = audio.precomputed_features(values.tobytes(), 3)
    assert features.shape == (3, 32, 16, 16) and np.array_equal(features, values)
    with pytest.raises(GenserveError) as error:
        audio.precomputed_features(values.tobytes(), 4)
    assert_invalid(error, "Invalid audio features size")
    assert f"got {values.nbytes} bytes, expected {4 * 32 * 16 * 16 * 4}" in error.value.message
    with pytest.raises(GenserveError) as error:
        audio.precomputed_features(values.tobytes()[:-1], 3)
    assert_invalid(error, "batch_size x 32 x 16 x 16 float32")


@pytest.mark.parametrize(("seconds", "rate"), [(10.0, 16_000), (10.0, 0), (10.0, 48_000), (0.64, 8_000)])
def test_audio_up_to_the_limit_is_accepted(seconds: float, rate: int) -> None:
    samples = round(seconds * (rate or audio.SAMPLE_RATE))
    audio.check_duration(4 * samples, rate, 10.0)


def test_audio_beyond_the_limit_is_refused_by_its_size() -> None:
    with pytest.raises(GenserveError) as error:
        audio.check_duration(4 * 160_016, 0, 10.0)  # one sample-pair past 10 s at 16 kHz
    assert_invalid(error, "raw_audio")
    assert error.value.message == (
        "raw_audio: 10.00 s of audio (160016 samples at 16000 Hz) is longer than the 10 s limit "
        "(lipsync.max_audio_s)"
    )
    with pytest.raises(GenserveError) as error:
        audio.check_duration(4 * 10_240, 7, 10.0)  # a bad rate is named as such, not as a long audio
    assert_invalid(error, "sample_rate")
