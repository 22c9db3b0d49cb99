"""lipsync: the InferBatchComposite request of monolithic.MonolithicService.

Masked face + reference crops ``[B,6,320,320]`` and 640 ms of audio in; the model's mouth crops
composited onto the model's background frames and encoded as JPEG out. Stages and their timings
are the spec's response fields: audio (mel -> audio encoder -> ``[B,32,16,16]``), inference (one
ONNX run, shared with concurrent requests for the same model when batching is on), compositing
(resize into each frame's crop box, paste, JPEG, spread over cores).

Validation messages are the spec's (``model_id is required``, ``batch_size must be 1-32``, ...)
with the numbers that explain them appended, so clients matching on the documented text work.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from pydantic import Field

from genserve.errors import ErrorCode, GenserveError
from genserve.models.capacity import is_refusal
from genserve.models.lipsync_registry import LipsyncRegistry, not_found
from genserve.models.loaders.lipsync import AUDIO_SHAPE, IMAGE_SIZE, VISUAL_CHANNELS, LipsyncModel
from genserve.models.registry import ModelKind
from genserve.services.base import Batching, BatchItem, RunContext, Service, ServiceModel
from genserve.services.lipsync.audio import audio_features, check_duration, precomputed_features
from genserve.services.lipsync.capacity import refusal
from genserve.services.lipsync.compositing import Compositor
from genserve.services.lipsync.devices import configured_device

MAX_BATCH = 32
FRAME_VALUES = VISUAL_CHANNELS * IMAGE_SIZE * IMAGE_SIZE


class LipsyncRequest(ServiceModel):
    """CompositeBatchRequest, field by field (proto3 defaults: empty bytes, zero numbers)."""

    model_id: str = ""
    visual_frames: bytes = b""
    raw_audio: bytes = b""
    audio_features: bytes = Field(b"", description="Deprecated: precomputed [B,32,16,16] float32.")
    batch_size: int = 0
    start_frame_idx: int = 0
    sample_rate: int = Field(0, description="Hz of raw_audio; 0 means 16000.")


class LipsyncResponse(ServiceModel):
    composited_frames: list[bytes]
    inference_time_ms: float
    composite_time_ms: float
    total_time_ms: float
    audio_processing_ms: float
    model_loaded: bool
    model_load_time_ms: float
    gpu_id: int


def _invalid(message: str, field: str) -> GenserveError:
    return GenserveError(ErrorCode.INVALID_INPUT, message, field=field)


def validate(
    request: LipsyncRequest, registry: LipsyncRegistry, max_audio_s: float | None = None
) -> np.ndarray:
    """Checks in the spec's order; returns the visual frames as a zero-copy ``[B,6,320,320]`` view.

    ``max_audio_s`` (``lipsync.max_audio_s``) bounds ``raw_audio`` by its size, before any of it
    is decoded: the whole buffer would otherwise be resampled, transformed and encoded.
    """
    if not request.model_id:
        raise _invalid("model_id is required", "model_id")
    batch = request.batch_size
    if not 1 <= batch <= MAX_BATCH:
        raise _invalid(f"batch_size must be 1-{MAX_BATCH} (got {batch})", "batch_size")
    expected = batch * FRAME_VALUES * 4
    if len(request.visual_frames) != expected:
        raise _invalid(
            f"Invalid visual frames size: got {len(request.visual_frames)} bytes, expected {expected} "
            f"(batch_size {batch} x {VISUAL_CHANNELS} x {IMAGE_SIZE} x {IMAGE_SIZE} float32)",
            "visual_frames",
        )
    if request.start_frame_idx < 0:
        raise _invalid(f"start_frame_idx must be >= 0 (got {request.start_frame_idx})", "start_frame_idx")
    if request.raw_audio and request.audio_features:
        raise _invalid("give raw_audio or the deprecated audio_features, not both", "audio_features")
    if not request.raw_audio and not request.audio_features:
        raise _invalid("raw_audio is required (float32 PCM, 16 kHz, 640 ms)", "raw_audio")
    if request.raw_audio and max_audio_s is not None:
        check_duration(len(request.raw_audio), request.sample_rate, max_audio_s)
    if not registry.is_known(request.model_id):
        raise not_found(request.model_id)
    visual = np.frombuffer(request.visual_frames, dtype="<f4").reshape(
        batch, VISUAL_CHANNELS, IMAGE_SIZE, IMAGE_SIZE
    )
    # One BLAS dot product reads every value (2 ms at B=25, half of np.isfinite): it is finite only
    # if no value is NaN, infinite, or so large (> 1e19) that it cannot be a pixel.
    flat = visual.reshape(-1)
    if not np.isfinite(np.dot(flat, flat)):
        raise _invalid("visual_frames holds NaN or infinite values (or values beyond 1e19)", "visual_frames")
    return visual


@dataclass(frozen=True)
class _Item:
    model: LipsyncModel
    visual: np.ndarray
    audio: np.ndarray


def _run_merged(items: list[_Item]) -> list[tuple[np.ndarray, float]]:
    """One ONNX run for every request of the batch; each gets its slice and the run's time."""
    model = items[0].model  # every item pinned the same loaded model under one id
    if len(items) == 1:
        visual, audio = items[0].visual, items[0].audio
    else:
        visual = np.concatenate([i.visual for i in items])
        audio = np.concatenate([i.audio for i in items])
    started = time.perf_counter()
    outputs = model.infer(visual, audio)
    elapsed = (time.perf_counter() - started) * 1000
    results, offset = [], 0
    for item in items:
        size = len(item.visual)
        results.append((outputs[offset : offset + size], elapsed))
        offset += size
    return results


Output = tuple[np.ndarray, float]  # a request's mouth crops from the merged run, and the run's ms


def run(
    request: LipsyncRequest,
    ctx: RunContext,
    *,
    registry: LipsyncRegistry,
    compositor: Compositor,
    batch_on_cpu: bool = True,
    max_audio_s: float | None = None,
) -> Generator[BatchItem, Output, LipsyncResponse]:
    """Validate, pin the model, prepare the audio; yield the inference to the engine, which merges
    it with concurrent requests for the same model (``Batching``); then composite and answer."""
    started = time.perf_counter()
    visual = validate(request, registry, max_audio_s)
    batch, model_id = request.batch_size, request.model_id
    loads: list[float] = []
    device = None
    if not ctx.models.is_loaded(ModelKind.LIPSYNC, model_id):
        registry.check_available(model_id)  # names the missing file instead of the loader's bare name
        device = configured_device(registry, model_id)
    with ExitStack() as stack:
        model = _pinned(stack, ctx, model_id, device, loads)
        backgrounds, boxes = model.frames(request.start_frame_idx, batch)
        ctx.check_cancelled()
        audio_started = time.perf_counter()
        if request.raw_audio:
            features = audio_features(request.raw_audio, request.sample_rate, batch, model.encode_audio)
        else:
            features = precomputed_features(request.audio_features, batch)
        audio_ms = (time.perf_counter() - audio_started) * 1000
        ctx.check_cancelled()
        audio = np.ascontiguousarray(features.reshape(batch, *AUDIO_SHAPE), np.float32)
        item = _Item(model, visual, audio)
        outputs, inference_ms = yield BatchItem(item, batch, merge=model.gpu_id >= 0 or batch_on_cpu)
        ctx.check_cancelled()
        composite_started = time.perf_counter()
        frames = compositor.composite(outputs, backgrounds, boxes)
        composite_ms = (time.perf_counter() - composite_started) * 1000
        # Counted before the model is let go, so an unload that waited for this request sees it.
        ctx.models.record(ModelKind.LIPSYNC, model_id, inference_ms)
    return LipsyncResponse(
        composited_frames=frames,
        inference_time_ms=inference_ms,
        composite_time_ms=composite_ms,
        total_time_ms=(time.perf_counter() - started) * 1000,
        audio_processing_ms=audio_ms,
        model_loaded=bool(loads),
        model_load_time_ms=loads[0] if loads else 0.0,
        gpu_id=model.gpu_id,
    )


def _pinned(
    stack: ExitStack, ctx: RunContext, model_id: str, device: str | None, loads: list[float]
) -> LipsyncModel:
    """The model, pinned until ``stack`` closes; waiting in the lip-sync pool for room if it is full."""
    try:
        use = ctx.models.use(
            ModelKind.LIPSYNC,
            model_id,
            device,
            on_load=loads.append,
            count=False,
            check_cancelled=ctx.check_cancelled,
        )
        return stack.enter_context(use)
    except GenserveError as exc:
        raise refusal(exc, model_id) if is_refusal(exc) else exc from None


def _model_of(request: LipsyncRequest) -> str:
    return request.model_id


def make_service(
    registry: LipsyncRegistry,
    compositor: Compositor,
    lane: str = "lipsync",
    *,
    batch_on_cpu: bool = True,
    max_audio_s: float | None = None,
) -> Service[Any, Any]:
    """The service is built per server: it closes over that server's registry and compositing pool.

    It declares its batching (requests for one model may share an ONNX run); the engine's lane
    does the merging.
    """
    return Service(
        name="lipsync",
        request_model=LipsyncRequest,
        response_model=LipsyncResponse,
        run=partial(
            run, registry=registry, compositor=compositor, batch_on_cpu=batch_on_cpu, max_audio_s=max_audio_s
        ),
        description="Lip-sync inference + compositing (monolithic.MonolithicService/InferBatchComposite).",
        lane=lane,
        batching=Batching(key=_model_of, run_batch=_run_merged),
    )
