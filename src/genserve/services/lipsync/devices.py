"""Which device a lip-sync model loads on: one rule for requests, preload and LoadModel.

One rule, so that the three paths cannot disagree about the same model. A configured GPU that is
not there (``preferred_gpu: 0`` on a host without it) is a configuration the host cannot honour,
not a request error: it is logged once (naming the model and the setting) and the choice falls
back to automatic (``None``: the model manager's default device).

LoadModel's ``preferred_gpu`` is proto3 ``int32``: a client that leaves it unset (the spec's own
grpcurl example and Use Case 4) sends 0, indistinguishable from "GPU 0". On a host with no GPU,
0 therefore means automatic; on a GPU host it stays GPU 0.
"""

from __future__ import annotations

import logging
import threading

import onnxruntime as ort
import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.lipsync_registry import LipsyncRegistry

log = logging.getLogger("genserve.lipsync")

AUTOMATIC = -1  # the proto's "-1 for auto"

_warned: set[tuple[str, int]] = set()
_warned_lock = threading.Lock()


def gpu_ids() -> list[int]:
    """GPUs the lip-sync models can run on: CUDA devices, if onnxruntime here has a CUDA provider."""
    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        return []
    return list(range(torch.cuda.device_count()))


def _describe(ids: list[int]) -> str:
    return ", ".join(map(str, ids)) or "none (CPU only)"


def _warn_once(model_id: str, gpu: int, ids: list[int]) -> None:
    """Once per model and value: the same misconfiguration would otherwise log on every request."""
    with _warned_lock:
        if (model_id, gpu) in _warned:
            return
        _warned.add((model_id, gpu))
    log.warning(
        "lip-sync model %s: lipsync.models.%s.preferred_gpu is %d, but this host's GPUs are %s; "
        "choosing the device automatically",
        model_id,
        model_id,
        gpu,
        _describe(ids),
    )


def configured_device(registry: LipsyncRegistry, model_id: str, ids: list[int] | None = None) -> str | None:
    """The config's ``preferred_gpu`` as a device name, or None for the automatic choice."""
    configured = registry.files(model_id).preferred_gpu
    if configured < 0:
        return None
    present = gpu_ids() if ids is None else ids
    if configured in present:
        return f"cuda:{configured}"
    _warn_once(model_id, configured, present)
    return None


def requested_device(registry: LipsyncRegistry, model_id: str, preferred_gpu: int) -> str | None:
    """LoadModel's ``preferred_gpu`` as a device name; None = automatic (the config's choice first).

    Raises INVALID_INPUT for a GPU id the host does not have, except 0 on a host with none (unset).
    """
    ids = gpu_ids()
    if preferred_gpu == AUTOMATIC or (preferred_gpu == 0 and not ids):
        return configured_device(registry, model_id, ids)
    if preferred_gpu in ids:
        return f"cuda:{preferred_gpu}"
    raise GenserveError(
        ErrorCode.INVALID_INPUT,
        f"Invalid GPU id {preferred_gpu}: available GPUs: {_describe(ids)}; -1 picks automatically "
        "(so does 0, the unset value, on a host without GPUs)",
        field="preferred_gpu",
    )
