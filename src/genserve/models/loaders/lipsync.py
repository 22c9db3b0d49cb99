"""Loads a lip-sync model: two onnxruntime sessions plus its decoded background frames and boxes.

One session per loaded model, shared by every request: onnxruntime's ``InferenceSession.run`` is
safe to call from several threads at once and keeps no per-call state in the session, so
requests never share buffers and cannot race on them. The backgrounds are decoded once at
load, so a request never reads a PNG, and they go with the model when it is unloaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.lipsync_registry import LipsyncRegistry
from genserve.models.loaders.base import LoadedModel, Loader
from genserve.models.registry import ModelEntry

log = logging.getLogger(__name__)

IMAGE_SIZE = 320  # the model's square face crop
VISUAL_CHANNELS = 6  # masked face + reference, BGR each
AUDIO_SHAPE = (32, 16, 16)
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
Box = tuple[int, int, int, int]


@dataclass(eq=False)
class LipsyncModel:
    """What ``ModelManager.use`` yields for a lip-sync id."""

    model_id: str
    session: ort.InferenceSession
    audio_encoder: ort.InferenceSession
    backgrounds: list[np.ndarray | None]  # BGR uint8 per frame index; None where the file is missing
    boxes: list[Box]
    gpu_id: int  # -1 on the CPU
    memory_bytes: int = 0
    _mel_input: str = field(default="", repr=False)

    @property
    def frame_count(self) -> int:
        return len(self.boxes)

    def infer(self, visual: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """``[B,6,320,320]`` + ``[B,32,16,16]`` -> ``[B,3,320,320]`` BGR in 0..1."""
        try:
            return self.session.run(["output"], {"input": visual, "audio": audio})[0]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise GenserveError(ErrorCode.INTERNAL, f"ONNX inference failed: {exc}") from exc

    def encode_audio(self, windows: np.ndarray) -> np.ndarray:
        """Mel windows ``[N,1,80,16]`` -> ``[N,512]``."""
        try:
            return self.audio_encoder.run(None, {self._mel_input: windows})[0]
        except Exception as exc:
            raise GenserveError(ErrorCode.INTERNAL, f"audio encoder failed: {exc}") from exc

    def frames(self, start: int, count: int) -> tuple[list[np.ndarray], list[Box]]:
        """Backgrounds and boxes for outputs ``start .. start+count-1``, wrapping around the video."""
        n = self.frame_count
        backgrounds, boxes = [], []
        for i in range(count):
            index = (start + i) % n
            background = self.backgrounds[index]
            if background is None:
                raise GenserveError(ErrorCode.NOT_FOUND, f"Background frame {index} not found", frame=index)
            backgrounds.append(background)
            boxes.append(self.boxes[index])
        return backgrounds, boxes


def _providers(device: torch.device) -> tuple[list[str | tuple[str, dict[str, int]]], int]:
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            index = device.index or 0
            return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], index
        log.warning("onnxruntime has no CUDA provider here; lip-sync models run on the CPU")
    return ["CPUExecutionProvider"], -1


def _session(
    path: Path, providers: list[str | tuple[str, dict[str, int]]], what: str
) -> ort.InferenceSession:
    if not path.is_file():
        raise GenserveError(ErrorCode.MODEL_NOT_FOUND, f"{what} not found: {path.name}", path=path.name)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are noise in a server log
    # Compositing runs on the same cores right after each run: idle onnxruntime threads that spin
    # waiting for the next run would take those cores (measured: +50% compositing time).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise GenserveError(ErrorCode.INTERNAL, f"cannot load {what} {path.name}: {exc}") from exc


def _check_io(session: ort.InferenceSession, model_id: str) -> None:
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    if set(inputs) != {"input", "audio"} or "output" not in outputs:
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"lip-sync model {model_id!r} must take inputs 'input' and 'audio' and give 'output'; "
            f"it takes {sorted(inputs)} and gives {outputs}",
        )


def _read_boxes(path: Path, model_id: str) -> list[Box]:
    try:
        raw = json.loads(path.read_text())
        boxes = [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in raw]
    except FileNotFoundError:
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND, f"crop rects not found for {model_id!r}: {path.name}"
        ) from None
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise GenserveError(
            ErrorCode.INVALID_INPUT, f"{path.name} of {model_id!r} is not a list of [x1,y1,x2,y2]: {exc}"
        ) from None
    if not boxes:
        raise GenserveError(ErrorCode.INVALID_INPUT, f"{path.name} of {model_id!r} lists no frames")
    return boxes


def _frame_file(folder: Path, index: int) -> Path | None:
    for suffix in _FRAME_SUFFIXES:
        candidate = folder / f"frame_{index:04d}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _read_frame(folder: Path, index: int) -> np.ndarray | None:
    path = _frame_file(folder, index)
    if path is None:
        return None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        log.warning("background %s cannot be decoded; requests that need it get an error", path)
    return image


def _read_backgrounds(folder: Path, count: int, model_id: str) -> list[np.ndarray | None]:
    if not folder.is_dir():
        raise GenserveError(
            ErrorCode.MODEL_NOT_FOUND, f"background folder not found for {model_id!r}: {folder.name}"
        )
    # cv2 decodes without the GIL, so the frames load on every core.
    with ThreadPoolExecutor(max_workers=max(1, min(8, count))) as pool:
        frames = list(pool.map(lambda i: _read_frame(folder, i), range(count)))
    missing = [i for i, f in enumerate(frames) if f is None]
    if len(missing) == count:
        raise GenserveError(ErrorCode.MODEL_NOT_FOUND, f"no background frames frame_%04d.png|jpg in {folder}")
    if missing:
        log.warning(
            "%s: %d of %d background frames missing (first: %d)", model_id, len(missing), count, missing[0]
        )
    return frames


def _warm_up(model: LipsyncModel) -> None:
    """One tiny run at load, so a broken graph fails here and CUDA memory is allocated and counted."""
    visual = np.zeros((1, VISUAL_CHANNELS, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    out = model.infer(visual, np.zeros((1, *AUDIO_SHAPE), np.float32))
    if out.shape != (1, 3, IMAGE_SIZE, IMAGE_SIZE):
        raise GenserveError(
            ErrorCode.INVALID_INPUT,
            f"lip-sync model {model.model_id!r} gives {list(out.shape)}, not [B,3,320,320]",
        )


def make_lipsync_loader(registry: LipsyncRegistry) -> Loader:
    def load_lipsync(entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoadedModel:
        files = registry.files(entry.name)
        providers, gpu_id = _providers(device)
        used_before = _gpu_used(gpu_id)
        session = _session(files.model, providers, "lip-sync model")
        _check_io(session, files.model_id)
        encoder = _session(files.audio_encoder, providers, "audio encoder")
        boxes = _read_boxes(files.crop_rects, files.model_id)
        backgrounds = _read_backgrounds(files.backgrounds, len(boxes), files.model_id)
        model = LipsyncModel(files.model_id, session, encoder, backgrounds, boxes, gpu_id)
        model._mel_input = encoder.get_inputs()[0].name
        _warm_up(model)
        frames_bytes = sum(f.nbytes for f in backgrounds if f is not None)
        if gpu_id >= 0:
            weights = max(_gpu_used(gpu_id) - used_before, 0)  # read from the device, not a guess
        else:
            weights = files.model.stat().st_size + files.audio_encoder.stat().st_size
        model.memory_bytes = weights + frames_bytes
        where = torch.device("cuda", gpu_id) if gpu_id >= 0 else torch.device("cpu")
        return LoadedModel(model, model.memory_bytes, where, release=_releaser(model))

    return load_lipsync


def _gpu_used(gpu_id: int) -> int:
    if gpu_id < 0 or not torch.cuda.is_available():
        return 0
    free, total = torch.cuda.mem_get_info(gpu_id)
    return int(total - free)


def _releaser(model: LipsyncModel) -> Callable[[], None]:
    def release() -> None:
        # Dropping the sessions frees their arenas; the frames go with the model object.
        model.backgrounds.clear()
        del model.session, model.audio_encoder

    return release
