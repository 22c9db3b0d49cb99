"""monolithic.MonolithicService at its limits, against the real server with the spec proto's stubs.

One lipsync.max_models slot shared by ``sanders``, ``alice`` and ``bob`` (``bob`` configured for
GPU 0, which a CPU host does not have), a configured ``ghost`` whose folder does not exist, a folder
``mute`` without its audio encoder, and a 2 s raw_audio limit.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from genserve.api.grpc.gen import monolithic_pb2 as pb
from genserve.api.grpc.gen import monolithic_pb2_grpc as rpc
from genserve.config.lipsync import LipsyncModelSettings
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind
from genserve.services.lipsync import devices as lipsync_devices
from genserve.services.lipsync.devices import gpu_ids
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server
from tests.integration.grpc.conftest import open_channel
from tests.integration.grpc.test_lipsync import SAMPLES, request

cpu_only = pytest.mark.skipif(bool(gpu_ids()), reason="checks the answers of a host without GPUs")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("lipsync_limits")
    models = root / "models"
    for model_id in ("sanders", "alice", "bob", "mute"):
        shutil.copytree(demo_models / "lipsync" / "sanders", models / "lipsync" / model_id)
    (models / "lipsync" / "mute" / "audio_encoder.onnx").unlink()
    data = root / "data"
    (data / "outputs").mkdir(parents=True)
    settings = small_settings(
        models, data, GENSERVE_LIPSYNC__MAX_MODELS="1", GENSERVE_LIPSYNC__MAX_AUDIO_S="2"
    )
    settings.lipsync.models = {"bob": LipsyncModelSettings(preferred_gpu=0), "ghost": LipsyncModelSettings()}
    with live_server(settings, data, grpc=True) as live:
        yield live


@pytest.fixture(scope="module")
def stub(server: LiveServer) -> Iterator[rpc.MonolithicServiceStub]:
    with open_channel(server.grpc_target, limit_mb=100) as channel:
        yield rpc.MonolithicServiceStub(channel)


def models_of(server: LiveServer) -> ModelManager:
    assert server.runtime.lipsync is not None
    return server.runtime.models


@cpu_only
def test_load_model_with_preferred_gpu_unset_picks_automatically(stub: rpc.MonolithicServiceStub) -> None:
    stub.UnloadModel(pb.UnloadModelRequest(model_id="sanders"))
    reply = stub.LoadModel(pb.LoadModelRequest(model_id="sanders"))  # proto3 sends preferred_gpu 0
    assert reply.success, reply.error
    assert reply.gpu_id == -1 and reply.load_time_ms > 0
    missing = stub.LoadModel(pb.LoadModelRequest(model_id="sanders", preferred_gpu=1))
    assert not missing.success and "Invalid GPU id 1" in missing.error


@cpu_only
def test_a_configured_gpu_that_is_not_here_falls_back_to_the_cpu(
    stub: rpc.MonolithicServiceStub, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lipsync_devices, "_warned", set())  # warned once per process: from here on
    stub.UnloadModel(pb.UnloadModelRequest(model_id="bob"))
    with caplog.at_level(logging.WARNING, logger="genserve.lipsync"):
        first = stub.InferBatchComposite(request(2, model_id="bob"), timeout=60)
        stub.UnloadModel(pb.UnloadModelRequest(model_id="bob"))
        loaded = stub.LoadModel(pb.LoadModelRequest(model_id="bob", preferred_gpu=-1))
    assert first.success, first.error
    assert first.gpu_id == -1 and first.model_loaded
    assert loaded.success and loaded.gpu_id == -1
    warnings = [r.getMessage() for r in caplog.records if "preferred_gpu" in r.getMessage()]
    assert len(warnings) == 1, warnings  # the request and LoadModel both fell back; logged once
    assert "lipsync.models.bob.preferred_gpu is 0" in warnings[0]


def test_alternating_models_on_one_slot_wait_for_it(stub: rpc.MonolithicServiceStub) -> None:
    ids = ["sanders", "alice"] * 6
    with ThreadPoolExecutor(len(ids)) as pool:
        replies = list(pool.map(lambda m: stub.InferBatchComposite(request(8, model_id=m), timeout=120), ids))
    assert [r.error for r in replies] == [""] * len(ids)
    assert all(r.success and len(r.composited_frames) == 8 for r in replies)


def test_a_request_waits_until_the_slot_is_let_go(
    stub: rpc.MonolithicServiceStub, server: LiveServer
) -> None:
    models = models_of(server)
    assert stub.LoadModel(pb.LoadModelRequest(model_id="sanders", preferred_gpu=-1)).success
    holding, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with models.use(ModelKind.LIPSYNC, "sanders"):
            holding.set()
            leave.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(10)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(stub.InferBatchComposite, request(1, model_id="alice"), timeout=60)
        time.sleep(0.8)
        assert not pending.done()  # waiting for the slot, not refused
        leave.set()
        reply = pending.result(60)
    holder.join(10)
    assert reply.success and reply.model_loaded


def test_a_slot_that_stays_busy_is_refused_naming_max_models(
    stub: rpc.MonolithicServiceStub, server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = models_of(server)
    assert stub.LoadModel(pb.LoadModelRequest(model_id="sanders", preferred_gpu=-1)).success
    # This test's lipsync.capacity_wait_s: 0.5 s (the module's server waits 30 s).
    short = dataclasses.replace(models.pool(ModelKind.LIPSYNC), capacity_wait_s=0.5)
    monkeypatch.setitem(models._pools.of, ModelKind.LIPSYNC, short)
    with models.use(ModelKind.LIPSYNC, "sanders"):
        started = time.monotonic()
        reply = stub.InferBatchComposite(request(1, model_id="bob"), timeout=60)  # no gRPC error
        waited = time.monotonic() - started
        loaded = stub.LoadModel(pb.LoadModelRequest(model_id="bob", preferred_gpu=-1))
    assert not reply.success and waited >= 0.5
    assert reply.error.startswith("Model 'bob' cannot be loaded: all lipsync.max_models=1 loaded models")
    assert "max_loaded" not in reply.error
    assert not loaded.success and "lipsync.max_models" in loaded.error


def test_raw_audio_beyond_the_limit_is_refused_before_processing(stub: rpc.MonolithicServiceStub) -> None:
    req = request(1)
    req.raw_audio = np.zeros(10_000_000, "<f4").tobytes()  # 625 s, 40 MB
    reply = stub.InferBatchComposite(req, timeout=60)
    assert not reply.success
    assert reply.error == (
        "raw_audio: 625.00 s of audio (10000000 samples at 16000 Hz) is longer than the 2 s limit "
        "(lipsync.max_audio_s)"
    )
    req.raw_audio = np.zeros(3 * SAMPLES, "<f4").tobytes()  # 1.92 s: accepted
    assert stub.InferBatchComposite(req, timeout=60).success
    req.raw_audio, req.sample_rate = np.zeros(6 * SAMPLES, "<f4").tobytes(), 48_000  # 1.28 s at 48 kHz
    assert stub.InferBatchComposite(req, timeout=60).success


def test_models_with_missing_files_are_shown_unavailable(
    stub: rpc.MonolithicServiceStub, server: LiveServer
) -> None:
    listed = {m.model_id for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert listed == {"sanders", "alice", "bob"}  # ghost and mute cannot load
    stats = {m.model_id: m for m in stub.GetModelStats(pb.GetModelStatsRequest()).models}
    assert {"ghost", "mute"} <= set(stats) and not stats["ghost"].loaded
    assert not stub.Health(pb.HealthRequest()).healthy
    ghost = stub.InferBatchComposite(request(1, model_id="ghost"), timeout=60)
    expected = (
        "Model 'ghost' not found: model file lipsync/ghost/model.onnx is missing from the models folder "
        "(lipsync.models.ghost.model_path)"
    )
    assert not ghost.success and ghost.error == expected
    assert stub.LoadModel(pb.LoadModelRequest(model_id="ghost")).error == expected
    mute = stub.InferBatchComposite(request(1, model_id="mute"), timeout=60)
    assert not mute.success
    assert mute.error == (
        "Model 'mute' not found: audio encoder lipsync/mute/audio_encoder.onnx "
        "is missing from the models folder"
    )
