"""The lip-sync loader through a real ModelManager: ONNX sessions, decoded frames, measured memory."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from genserve.config.lipsync import LipsyncModelSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.models.demo.lipsync import IR_VERSION, OPSET, build_lipsync_demo
from genserve.models.loaders.lipsync import LipsyncModel, make_lipsync_loader
from genserve.models.manager import ModelManager
from genserve.models.registry import ModelKind, ModelRegistry

pytestmark = pytest.mark.timeout(60)

LIPSYNC = ModelKind.LIPSYNC
FRAMES = 3


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    build_lipsync_demo(root / "lipsync" / "demo", frames=FRAMES, width=320, height=240)
    return root


def manager_for(models: Path, configured: dict[str, LipsyncModelSettings] | None = None) -> ModelManager:
    registry = ModelRegistry(models, configured or {})
    return ModelManager(registry, {LIPSYNC: make_lipsync_loader(registry.lipsync)}, default_device="cpu")


def load_error(manager: ModelManager, model_id: str = "demo") -> GenserveError:
    with pytest.raises(GenserveError) as info:
        manager.load(LIPSYNC, model_id)
    assert not manager.is_loaded(LIPSYNC, model_id)
    return info.value


def test_loads_on_cpu_with_memory_of_the_onnx_files_and_decoded_frames(models: Path) -> None:
    folder = models / "lipsync" / "demo"
    manager = manager_for(models)
    with manager.use(LIPSYNC, "demo") as model:
        assert isinstance(model, LipsyncModel)
        assert model.model_id == "demo" and model.gpu_id == -1
        assert model.frame_count == FRAMES
        assert [b.shape for b in model.backgrounds] == [(240, 320, 3)] * FRAMES
        expected = (
            (folder / "model.onnx").stat().st_size
            + (folder / "audio_encoder.onnx").stat().st_size
            + FRAMES * 240 * 320 * 3
        )
        assert model.memory_bytes == expected
        visual = np.random.default_rng(0).random((2, 6, 320, 320), dtype=np.float32)
        output = model.infer(visual, np.zeros((2, 32, 16, 16), np.float32))
        assert output.shape == (2, 3, 320, 320)
        embedding = model.encode_audio(np.zeros((4, 1, 80, 16), np.float32))
        assert embedding.shape == (4, 512)
    [stats] = manager.loaded()
    assert (stats.name, stats.device, stats.memory_bytes) == ("demo", "cpu", expected)


def test_frames_wrap_around_the_video(models: Path) -> None:
    boxes = [tuple(b) for b in json.loads((models / "lipsync/demo/crop_rects.json").read_text())]
    with manager_for(models).use(LIPSYNC, "demo") as model:
        backgrounds, got = model.frames(2, 5)
        order = [2, 0, 1, 2, 0]
        assert got == [boxes[i] for i in order]
        assert all(b is model.backgrounds[i] for b, i in zip(backgrounds, order, strict=True))
        assert model.frames(FRAMES * 4 + 1, 1)[1] == [boxes[1]]
        on_disk = cv2.imread(str(models / "lipsync/demo/frames/frame_0001.png"), cv2.IMREAD_COLOR)
        assert np.array_equal(model.frames(1, 1)[0][0], on_disk)


def test_a_missing_frame_fails_only_the_requests_that_touch_it(models: Path) -> None:
    (models / "lipsync/demo/frames/frame_0001.png").unlink()
    with manager_for(models).use(LIPSYNC, "demo") as model:
        assert model.backgrounds[1] is None
        assert len(model.frames(2, 2)[0]) == 2  # frames 2 and 0
        for start, count in ((1, 1), (0, 2), (2, 3)):
            with pytest.raises(GenserveError) as info:
                model.frames(start, count)
            assert info.value.code is ErrorCode.NOT_FOUND
            assert info.value.message == "Background frame 1 not found"


def test_all_frames_missing_is_refused(models: Path) -> None:
    for frame in (models / "lipsync/demo/frames").iterdir():
        frame.unlink()
    error = load_error(manager_for(models))
    assert error.code is ErrorCode.MODEL_NOT_FOUND and "no background frames" in error.message


def test_a_graph_with_wrong_input_names_is_refused_naming_them(models: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["image", "sound"], ["output"])],
        "wrong_names",
        inputs=[
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("sound", TensorProto.FLOAT, ["batch", 3]),
        ],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.save_model(model, models / "lipsync/demo/model.onnx")
    error = load_error(manager_for(models))
    assert error.code is ErrorCode.INVALID_INPUT
    assert "'demo'" in error.message
    assert "['image', 'sound']" in error.message
    assert "'input' and 'audio'" in error.message


def test_a_graph_with_the_wrong_output_shape_is_refused(models: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"]), helper.make_node("Identity", ["audio"], ["a"])],
        "wrong_shape",
        inputs=[
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 6, 320, 320]),
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 32, 16, 16]),
        ],
        outputs=[
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 6, 320, 320]),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 32, 16, 16]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.save_model(model, models / "lipsync/demo/model.onnx")
    error = load_error(manager_for(models))
    assert error.code is ErrorCode.INVALID_INPUT and "[1, 6, 320, 320]" in error.message


def test_a_file_that_is_not_onnx_is_refused(models: Path) -> None:
    (models / "lipsync/demo/model.onnx").write_bytes(b"not a graph")
    error = load_error(manager_for(models))
    assert error.code is ErrorCode.INTERNAL and "cannot load lip-sync model model.onnx" in error.message


def test_a_missing_audio_encoder_is_refused(models: Path) -> None:
    (models / "lipsync/demo/audio_encoder.onnx").unlink()
    error = load_error(manager_for(models))
    assert error.code is ErrorCode.MODEL_NOT_FOUND
    assert error.message == "audio encoder not found: audio_encoder.onnx"


def test_missing_crop_rects_is_refused(models: Path) -> None:
    (models / "lipsync/demo/crop_rects.json").unlink()
    error = load_error(manager_for(models))
    assert error.code is ErrorCode.MODEL_NOT_FOUND
    assert "crop rects not found for 'demo': crop_rects.json" in error.message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]\n", "lists no frames"),
        ('{"a": 1}', "is not a list of [x1,y1,x2,y2]"),
        ("[[1, 2]]", "is not a list"),
    ],
)
def test_bad_crop_rects_are_refused(models: Path, content: str, message: str) -> None:
    (models / "lipsync/demo/crop_rects.json").write_text(content)
    error = load_error(manager_for(models))
    assert error.code is ErrorCode.INVALID_INPUT
    assert "crop_rects.json of 'demo'" in error.message and message in error.message


def test_configured_file_names_are_used(models: Path) -> None:
    folder = models / "lipsync" / "demo"
    (folder / "model.onnx").rename(folder / "lips.onnx")  # the folder holds no model.onnx any more
    (folder / "frames").rename(folder / "video")
    # An id with no folder of its own, pointing at the renamed files (relative to lipsync/renamed/).
    settings = LipsyncModelSettings(
        model_path=Path("../demo/lips.onnx"),
        audio_encoder_path=Path("../demo/audio_encoder.onnx"),
        background_dir=Path("../demo/video"),
        crop_rects_path=Path("../demo/crop_rects.json"),
    )
    manager = manager_for(models, {"renamed": settings})
    assert manager.registry.lipsync.ids() == ["renamed"]
    with manager.use(LIPSYNC, "renamed") as model:
        assert model.model_id == "renamed" and model.frame_count == FRAMES


def test_unload_releases_the_sessions_and_frames(models: Path) -> None:
    manager = manager_for(models)
    with manager.use(LIPSYNC, "demo") as model:
        pass
    assert manager.unload(LIPSYNC, "demo")
    assert model.backgrounds == []
    assert not hasattr(model, "session")
    with manager.use(LIPSYNC, "demo") as again:
        assert again is not model and again.frame_count == FRAMES
