"""monolithic.MonolithicService against the real server, with stubs generated from the spec's proto.

The server serves four ids built from the demo lip-sync model: ``sanders``, ``bob`` and ``alice``
(identical copies) and ``gappy`` (background frame 2 deleted), with capacity for two models so
that eviction shows.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from genserve.api.grpc.gen import monolithic_pb2 as pb
from genserve.api.grpc.gen import monolithic_pb2_grpc as rpc
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, wait_for
from tests.integration.grpc.conftest import open_channel

SAMPLES = 10_240  # 640 ms at 16 kHz
FRAME = 6 * 320 * 320


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("lipsync")
    models = root / "models"
    for model_id in ("sanders", "bob", "alice", "gappy"):
        shutil.copytree(demo_models / "lipsync" / "sanders", models / "lipsync" / model_id)
    (models / "lipsync" / "gappy" / "frames" / "frame_0002.png").unlink()
    data = root / "data"
    (data / "outputs").mkdir(parents=True)
    settings = small_settings(
        models,
        data,
        GENSERVE_LIPSYNC__MAX_MODELS="2",
        # A request alone never waits; concurrent ones wait up to this long, long enough on a
        # loaded two-core runner for the concurrency test's requests to meet.
        GENSERVE_LIPSYNC__MAX_BATCH_DELAY_MS="400",
        GENSERVE_LIPSYNC__BATCHING="on",
    )
    with live_server(settings, data, grpc=True) as live:
        yield live


@pytest.fixture(scope="module")
def stub(server: LiveServer) -> Iterator[rpc.MonolithicServiceStub]:
    with open_channel(server.grpc_target, limit_mb=100) as channel:
        yield rpc.MonolithicServiceStub(channel)


def request(batch: int, seed: int = 0, model_id: str = "sanders", start: int = 0) -> pb.CompositeBatchRequest:
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * np.arange(SAMPLES) / 16_000)
    return pb.CompositeBatchRequest(
        model_id=model_id,
        visual_frames=rng.random(batch * FRAME, dtype=np.float32).tobytes(),
        raw_audio=tone.astype("<f4").tobytes(),
        batch_size=batch,
        start_frame_idx=start,
        sample_rate=16_000,
    )


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image.astype(np.int16)


def background(server: LiveServer, index: int) -> tuple[np.ndarray, list[int]]:
    import json

    folder = server.runtime.settings.models.dir / "lipsync" / "sanders"
    boxes = json.loads((folder / "crop_rects.json").read_text())
    index %= len(boxes)
    image = cv2.imread(str(folder / "frames" / f"frame_{index:04d}.png"), cv2.IMREAD_COLOR)
    return image.astype(np.int16), boxes[index]


@pytest.mark.parametrize("batch", [1, 8, 25, 32])
def test_batches_composite_onto_the_backgrounds(
    stub: rpc.MonolithicServiceStub, server: LiveServer, batch: int
) -> None:
    start = 5
    reply = stub.InferBatchComposite(request(batch, start=start), timeout=120)
    assert reply.success, reply.error
    assert reply.error == ""
    assert len(reply.composited_frames) == batch
    assert reply.gpu_id == -1  # CPU
    assert reply.inference_time_ms > 0 and reply.composite_time_ms > 0 and reply.audio_processing_ms > 0
    assert reply.total_time_ms >= reply.inference_time_ms + reply.composite_time_ms
    for i in (0, batch - 1):
        frame = decode(reply.composited_frames[i])
        bg, (x1, y1, x2, y2) = background(server, start + i)
        assert frame.shape == bg.shape == (360, 640, 3)
        outside = np.ones(bg.shape[:2], bool)
        outside[max(y1 - 16, 0) : y2 + 16, max(x1 - 16, 0) : x2 + 16] = False  # JPEG blocks on the edge
        assert np.abs(frame - bg)[outside].mean() < 3.0  # only JPEG's loss outside the box
        assert np.abs(frame[y1:y2, x1:x2] - bg[y1:y2, x1:x2]).mean() > 10.0  # the mouth crop replaced it


def test_the_first_request_reports_the_load(stub: rpc.MonolithicServiceStub, server: LiveServer) -> None:
    stub.UnloadModel(pb.UnloadModelRequest(model_id="bob"))
    first = stub.InferBatchComposite(request(1, model_id="bob"), timeout=60)
    second = stub.InferBatchComposite(request(1, model_id="bob"), timeout=60)
    assert first.success and second.success
    assert first.model_loaded and first.model_load_time_ms > 0
    assert not second.model_loaded and second.model_load_time_ms == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_id": ""}, "model_id is required"),
        ({"batch_size": 0}, "batch_size must be 1-32"),
        ({"batch_size": 33}, "batch_size must be 1-32"),
        ({"visual_frames": b"\0" * 100}, "Invalid visual frames size"),
        ({"model_id": "nobody"}, "Model 'nobody' not found"),
        ({"sample_rate": 7}, "sample_rate"),
        ({"raw_audio": b""}, "raw_audio is required"),
        ({"raw_audio": b"\0\0\0"}, "raw_audio"),
    ],
)
def test_application_errors_come_back_in_the_response(
    stub: rpc.MonolithicServiceStub, change: dict[str, object], message: str
) -> None:
    req = request(2)
    for key, value in change.items():
        setattr(req, key, value)
    reply = stub.InferBatchComposite(req, timeout=60)
    assert not reply.success
    assert message in reply.error
    assert list(reply.composited_frames) == []


def test_a_missing_background_frame_is_named(stub: rpc.MonolithicServiceStub) -> None:
    reply = stub.InferBatchComposite(request(2, model_id="gappy", start=1), timeout=60)
    assert not reply.success
    assert reply.error == "Background frame 2 not found"
    assert stub.InferBatchComposite(request(2, model_id="gappy", start=3), timeout=60).success


def test_deprecated_audio_features_are_accepted(stub: rpc.MonolithicServiceStub) -> None:
    req = request(3)
    req.raw_audio = b""
    req.audio_features = np.zeros(3 * 32 * 16 * 16, "<f4").tobytes()
    assert stub.InferBatchComposite(req, timeout=60).success
    req.audio_features = b"\0" * 64
    reply = stub.InferBatchComposite(req, timeout=60)
    assert not reply.success and "Invalid audio features size" in reply.error


def test_other_sample_rates_are_resampled(stub: rpc.MonolithicServiceStub) -> None:
    req = request(4)
    audio = (0.2 * np.sin(np.arange(3 * SAMPLES) / 48_000 * 2 * np.pi * 300)).astype("<f4")
    req.raw_audio, req.sample_rate = audio.tobytes(), 48_000
    reply = stub.InferBatchComposite(req, timeout=60)
    assert reply.success, reply.error
    assert len(reply.composited_frames) == 4


def test_concurrent_clients_get_their_own_frames(stub: rpc.MonolithicServiceStub, server: LiveServer) -> None:
    # A model no earlier test ran, and runs of one size only: its run's fixed cost is unknown, so a
    # leader waits (up to max_batch_delay_ms) for the requests on their way. Once a key's cost is
    # known on a CPU, where run time grows with size alone, waiting does not pay and the batcher
    # rightly runs them apart: that is why this test must not share "sanders" with the others.
    seeds = [1, 2] * 4
    alone = {s: stub.InferBatchComposite(request(2, seed=s, model_id="alice"), timeout=60) for s in (1, 2)}
    requests = [request(2, seed=s, model_id="alice") for s in seeds]  # built up front: they leave together
    before = server.runtime.engine.batcher("lipsync").stats()  # type: ignore[union-attr]
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(lambda r: stub.InferBatchComposite(r, timeout=60), requests))
    after = server.runtime.engine.batcher("lipsync").stats()  # type: ignore[union-attr]
    assert all(r.success for r in together)
    for reply, seed in zip(together, seeds, strict=True):
        for got, expected in zip(reply.composited_frames, alone[seed].composited_frames, strict=True):
            assert np.abs(decode(got) - decode(expected)).max() <= 2  # the same frames, batched or not
    assert (
        np.abs(decode(together[0].composited_frames[0]) - decode(together[1].composited_frames[0])).mean() > 1
    )
    assert after.requests - before.requests == len(seeds)
    assert after.runs - before.runs < len(seeds)  # some of them shared an ONNX run


def test_health_and_lists(stub: rpc.MonolithicServiceStub) -> None:
    health = stub.Health(pb.HealthRequest())
    assert health.healthy
    assert health.max_models == 2
    assert list(health.gpu_ids) == [] and list(health.gpu_memory_used_gb) == []
    listed = {m.model_id: m for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert set(listed) == {"sanders", "bob", "alice", "gappy"}  # loaded or not
    assert health.loaded_models == sum(m.loaded for m in listed.values())
    for m in listed.values():
        assert (m.gpu_id == -1) and ((m.memory_mb > 0) == m.loaded)


def test_stats_count_requests(stub: rpc.MonolithicServiceStub) -> None:
    def stats() -> pb.ModelStats:
        return next(m for m in stub.GetModelStats(pb.GetModelStatsRequest()).models if m.model_id == "alice")

    before = stats()
    for _ in range(3):
        assert stub.InferBatchComposite(request(1, model_id="alice"), timeout=60).success
    after = stats()
    assert after.request_count == before.request_count + 3
    assert after.total_inference_ms >= before.total_inference_ms
    assert after.avg_inference_ms == pytest.approx(after.total_inference_ms / after.request_count, abs=1.0)
    assert abs(after.last_used_timestamp - time.time()) < 60
    assert after.loaded and after.memory_mb > 0


def test_lru_eviction_at_max_models(stub: rpc.MonolithicServiceStub) -> None:
    for model_id in ("sanders", "bob", "alice", "gappy"):
        stub.UnloadModel(pb.UnloadModelRequest(model_id=model_id))
    assert stub.LoadModel(pb.LoadModelRequest(model_id="sanders", preferred_gpu=-1)).success
    assert stub.LoadModel(pb.LoadModelRequest(model_id="bob", preferred_gpu=-1)).success
    assert stub.InferBatchComposite(request(1, model_id="sanders"), timeout=60).success  # sanders now newest
    reply = stub.InferBatchComposite(request(1, model_id="alice"), timeout=60)  # room for alice: bob goes
    assert reply.success and reply.model_loaded
    loaded = {m.model_id for m in stub.ListModels(pb.ListModelsRequest()).models if m.loaded}
    assert loaded == {"sanders", "alice"}


def test_load_and_unload(stub: rpc.MonolithicServiceStub) -> None:
    stub.UnloadModel(pb.UnloadModelRequest(model_id="sanders"))
    first = stub.LoadModel(pb.LoadModelRequest(model_id="sanders", preferred_gpu=-1))
    assert first.success and first.gpu_id == -1 and first.load_time_ms > 0
    again = stub.LoadModel(pb.LoadModelRequest(model_id="sanders", preferred_gpu=-1))
    assert again.success and again.load_time_ms == 0
    bad_gpu = stub.LoadModel(pb.LoadModelRequest(model_id="sanders", preferred_gpu=3))
    assert not bad_gpu.success and "Invalid GPU id 3" in bad_gpu.error
    unknown = stub.LoadModel(pb.LoadModelRequest(model_id="nobody"))
    assert not unknown.success and unknown.error == "Model 'nobody' not found"
    assert stub.UnloadModel(pb.UnloadModelRequest(model_id="sanders")).success
    twice = stub.UnloadModel(pb.UnloadModelRequest(model_id="sanders"))
    assert not twice.success and "not loaded" in twice.error
    assert not stub.UnloadModel(pb.UnloadModelRequest(model_id="")).success


def test_unload_waits_for_requests_in_flight(stub: rpc.MonolithicServiceStub, server: LiveServer) -> None:
    parts = server.runtime.lipsync
    assert parts is not None

    def served() -> int:
        return next(
            m for m in stub.GetModelStats(pb.GetModelStatsRequest()).models if m.model_id == "sanders"
        ).request_count

    assert stub.LoadModel(pb.LoadModelRequest(model_id="sanders", preferred_gpu=-1)).success
    before = served()
    results: list[pb.CompositeBatchResponse] = []
    worker = threading.Thread(
        target=lambda: results.append(stub.InferBatchComposite(request(32), timeout=120))
    )
    worker.start()
    wait_for(lambda: any(s.pinned for s in parts.models.stats()), what="the request to hold the model")
    unloaded = stub.UnloadModel(pb.UnloadModelRequest(model_id="sanders"), timeout=120)
    counted_at_unload = served()  # a request is counted just before it lets the model go
    worker.join(120)
    assert unloaded.success
    assert counted_at_unload == before + 1, "the unload answered before the request using the model finished"
    assert results[0].success and len(results[0].composited_frames) == 32
    assert not parts.models.is_loaded("lipsync", "sanders")


def test_lipsync_models_are_in_the_one_model_inventory(
    stub: rpc.MonolithicServiceStub, server: LiveServer
) -> None:
    """One manager: a lip-sync model served over gRPC shows in /api/v1/models, its memory in the
    device totals of /api/v1/models/stats, and in /metrics, like every other kind's."""
    assert stub.InferBatchComposite(request(1, model_id="sanders"), timeout=60).success
    with server.client() as client:
        rows = client.get("/api/v1/models", params={"kind": "lipsync"}).json()["models"]
        stats = client.get("/api/v1/models/stats").json()
        metrics = client.get("/metrics").text
    [sanders] = [row for row in rows if row["name"] == "sanders"]
    assert sanders["loaded"] and sanders["device"] == "cpu" and sanders["memory_bytes"] > 0
    assert sanders["request_count"] >= 1
    loaded = [m for m in stats["models"] if m["loaded"] and m["device"] == "cpu"]
    assert {"kind": "lipsync", "name": "sanders"}.items() <= next(
        m for m in loaded if m["name"] == "sanders"
    ).items()
    assert stats["memory_bytes_by_device"]["cpu"] == sum(m["memory_bytes"] for m in loaded)
    pools = {pool["name"]: pool for pool in stats["pools"]}
    assert pools["lipsync"]["kinds"] == ["lipsync"] and pools["lipsync"]["max_loaded"] == 2
    assert "lipsync" not in pools["models"]["kinds"] and "vae" in pools["models"]["kinds"]
    assert pools["lipsync"]["memory_bytes_by_device"]["cpu"] >= sanders["memory_bytes"]
    assert pools["lipsync"]["capacity_wait_s"] == 30 and pools["models"]["capacity_wait_s"] == 0
    memory = {
        (sample.labels["kind"], sample.labels["name"], sample.labels["device"]): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "genserve_model_memory_bytes"
    }
    assert memory[("lipsync", "sanders", "cpu")] == sanders["memory_bytes"]
