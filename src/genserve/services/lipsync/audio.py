"""Raw PCM -> the ``[B, 32, 16, 16]`` audio features a Wav2Lip-style lip-sync model takes.

The path is the original's (Wav2Lip's ``audio.py`` hyper-parameters): pre-emphasis, STFT
magnitude, an 80-band mel filterbank, amplitude to dB relative to 20 dB, and a symmetric
normalisation to [-4, 4]. The spectrogram is cut into 16-frame mel windows, one per 40 ms video
step; an audio encoder (an ONNX session the server passes in as ``encode``) turns each window into
a 512-d vector, and each video frame gets the 16 vectors around it, reshaped to ``[32, 16, 16]``.

Every step uses a maintained library (scipy for the filter, librosa for STFT and filterbank, soxr
for resampling), so the numbers match what the models were trained on rather than a home-made DSP.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import librosa
import numpy as np
import soxr

from genserve.errors import ErrorCode, GenserveError

SAMPLE_RATE = 16_000
N_FFT = 800
WIN_SIZE = 800
HOP_SIZE = 200
NUM_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
# 20 * log10(MIN_AMPLITUDE) == MIN_LEVEL_DB: the floor Wav2Lip's ``_amp_to_db`` applies.
MIN_AMPLITUDE = 1e-5

FPS = 25
MEL_STEP = 16
EMBED_DIM = 512
CONTEXT = 16
FEATURE_SHAPE = (32, 16, 16)  # CONTEXT * EMBED_DIM values per frame, as the model's `audio` input wants.

# Mel frames per second (SAMPLE_RATE / HOP_SIZE = 80) over video frames per second: window t of the
# original's inference loop starts at int(MEL_FRAMES_PER_STEP * t).
MEL_FRAMES_PER_STEP = SAMPLE_RATE / HOP_SIZE / FPS
SAMPLES_PER_STEP = SAMPLE_RATE // FPS  # 640 samples = 40 ms

# Resampling outside this range is almost certainly a client bug (bytes sent as the wrong type, a
# rate in kHz); refuse it instead of producing silence or a huge buffer.
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000

_FLOAT32_LE = np.dtype("<f4")


def _invalid(field: str, message: str) -> GenserveError:
    return GenserveError(ErrorCode.INVALID_INPUT, f"{field}: {message}", field=field)


def decode_pcm(data: bytes) -> np.ndarray:
    """``raw_audio`` bytes -> float32 samples, without copying (a read-only view of ``data``).

    The wire format is little-endian float32 mono; an odd byte count or a NaN/inf means the client
    sent something else (int16 PCM, a corrupted buffer), which would silently turn into noise.
    """
    if not data:
        raise _invalid("raw_audio", "is empty; expected float32 little-endian PCM samples")
    if len(data) % _FLOAT32_LE.itemsize:
        raise _invalid(
            "raw_audio", f"size {len(data)} bytes is not a multiple of 4 (float32 little-endian PCM)"
        )
    samples = np.frombuffer(data, dtype=_FLOAT32_LE)
    if not np.isfinite(samples).all():
        raise _invalid("raw_audio", "contains NaN or infinite samples")
    return samples.astype(np.float32, copy=False)


def check_sample_rate(sample_rate: int) -> int:
    """The rate ``raw_audio`` is at (0, the proto's unset default, means 16 kHz); refuses odd ones."""
    if sample_rate == 0:
        return SAMPLE_RATE
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise _invalid(
            "sample_rate",
            f"{sample_rate} Hz is not supported; "
            f"use 0 (default {SAMPLE_RATE}) or {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}",
        )
    return sample_rate


def check_duration(nbytes: int, sample_rate: int, limit_s: float) -> None:
    """Refuse ``raw_audio`` longer than ``limit_s`` from its size alone, before any decoding.

    Every sample is resampled, mel-transformed and encoded (a window is needed every 40 ms), so an
    unbounded buffer cost seconds and about 10x its size in memory although a batch uses only the
    audio around its frames; the limit is ``lipsync.max_audio_s``.
    """
    rate = check_sample_rate(sample_rate)
    samples = nbytes // _FLOAT32_LE.itemsize
    duration = samples / rate
    if duration > limit_s:
        raise _invalid(
            "raw_audio",
            f"{duration:.2f} s of audio ({samples} samples at {rate} Hz) is longer than the "
            f"{limit_s:g} s limit (lipsync.max_audio_s)",
        )


def resample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Bring ``audio`` to 16 kHz; ``sample_rate`` 0 is the proto's unset default, meaning 16 kHz.

    Audio at another rate read as 16 kHz would play three times too slow (48 kHz): it is
    resampled with soxr (high quality, band-limited).
    """
    rate = check_sample_rate(sample_rate)
    if rate == SAMPLE_RATE:
        return audio
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32, copy=False)


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    """The [80, 401] filterbank, built once: it is the same for every request."""
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=FMIN, fmax=FMAX)
    basis = basis.astype(np.float32)
    basis.setflags(write=False)
    return basis


def mel_spectrogram(audio: np.ndarray) -> np.ndarray:
    """16 kHz samples -> normalised mel spectrogram [80, T] in [-4, 4], T = 1 + len // 200.

    ``pad_mode="reflect"`` is explicit because it was librosa's default when Wav2Lip was trained;
    librosa >= 0.10 pads with zeros by default, which changes the edge frames.
    """
    from scipy.signal import lfilter  # here: scipy.signal takes ~0.8 s to import, every CLI command paid it

    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], audio).astype(np.float32, copy=False)
    spectrum = librosa.stft(
        y=emphasised, n_fft=N_FFT, hop_length=HOP_SIZE, win_length=WIN_SIZE, pad_mode="reflect"
    )
    mel = _mel_basis() @ np.abs(spectrum)
    db = 20.0 * np.log10(np.maximum(MIN_AMPLITUDE, mel)) - REF_LEVEL_DB
    scaled = (2.0 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32, copy=False)


def mel_windows(mel: np.ndarray, steps: int) -> np.ndarray:
    """[80, T] -> [steps, 1, 80, 16]: the 16-frame mel window of each 40 ms video step.

    Window t starts at mel frame int(3.2 * t) as in the original's inference loop. Where the last
    windows run past the end of the spectrogram, the last mel frame is repeated (edge padding), so
    every step gets a full window whatever the audio length.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    starts = (np.arange(steps) * MEL_FRAMES_PER_STEP).astype(np.int64)
    needed = int(starts[-1]) + MEL_STEP
    if mel.shape[1] < needed:
        mel = np.pad(mel, ((0, 0), (0, needed - mel.shape[1])), mode="edge")
    columns = starts[:, None] + np.arange(MEL_STEP)[None, :]  # [steps, 16]
    windows = mel[:, columns]  # [80, steps, 16]
    return np.ascontiguousarray(windows.transpose(1, 0, 2)[:, None], dtype=np.float32)


def video_steps(num_samples: int) -> int:
    """How many 40 ms (25 fps) steps ``num_samples`` at 16 kHz cover; a partial last step counts."""
    return max(1, math.ceil(num_samples / SAMPLES_PER_STEP))


def frame_features(embeddings: np.ndarray, batch_size: int) -> np.ndarray:
    """[steps, 512] encoder vectors -> [B, 32, 16, 16] model features, one per video frame.

    Frame i takes the 16 vectors of steps i-8 .. i+7 (its audio context: 320 ms before, 280 ms
    after), each index clamped to [0, steps-1], concatenated (16 x 512 = 8192) and reshaped to
    [32, 16, 16]. Audio normally covers the batch (B x 40 ms). When it is shorter, as with the
    spec's fixed 640 ms (16 steps) and batch 25, the later frames clamp to the last steps: frames
    past the audio repeat the final context instead of failing or reading garbage.
    """
    if embeddings.ndim != 2 or embeddings.shape[1] != EMBED_DIM or embeddings.shape[0] < 1:
        raise GenserveError(
            ErrorCode.INTERNAL,
            f"audio encoder returned shape {tuple(embeddings.shape)}, expected [steps, {EMBED_DIM}]",
        )
    steps = embeddings.shape[0]
    offsets = np.arange(-(CONTEXT // 2), CONTEXT - CONTEXT // 2)  # -8 .. 7
    indices = np.clip(np.arange(batch_size)[:, None] + offsets[None, :], 0, steps - 1)
    gathered = np.asarray(embeddings, dtype=np.float32)[indices]  # [B, 16, 512], a fresh array
    return gathered.reshape(batch_size, *FEATURE_SHAPE)


def audio_features(
    pcm: bytes,
    sample_rate: int,
    batch_size: int,
    encode: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """The whole path: ``raw_audio`` bytes -> [B, 32, 16, 16] float32 for the lip-sync model.

    ``encode`` maps mel windows [N, 1, 80, 16] to [N, 512]; the server passes its audio-encoder
    ONNX session, so this module stays free of model loading.
    """
    audio = resample(decode_pcm(pcm), sample_rate)
    steps = video_steps(audio.shape[0])
    windows = mel_windows(mel_spectrogram(audio), steps)
    embeddings = np.asarray(encode(windows))
    if embeddings.shape != (steps, EMBED_DIM):
        raise GenserveError(
            ErrorCode.INTERNAL,
            f"audio encoder returned shape {tuple(embeddings.shape)} for {steps} mel windows, "
            f"expected ({steps}, {EMBED_DIM})",
        )
    return frame_features(embeddings, batch_size)


def precomputed_features(data: bytes, batch_size: int) -> np.ndarray:
    """The deprecated ``audio_features`` field: client-computed [B, 32, 16, 16] float32 bytes.

    Kept because the spec still accepts it; the size must match the batch exactly, since a
    mismatch would otherwise pair frames with the wrong audio.
    """
    per_frame = int(np.prod(FEATURE_SHAPE))
    expected = batch_size * per_frame * _FLOAT32_LE.itemsize
    if len(data) != expected:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"Invalid audio features size: got {len(data)} bytes, expected {expected} "
            "(batch_size x 32 x 16 x 16 float32)",
            field="audio_features",
        )
    features = np.frombuffer(data, dtype=_FLOAT32_LE).reshape(batch_size, *FEATURE_SHAPE)
    if not np.isfinite(features).all():
        raise _invalid("audio_features", "contains NaN or infinite values")
    return features.astype(np.float32, copy=False)
