"""LipsyncRegistry: ids from folders and config, names that never escape, paths inside the models folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from genserve.config.lipsync import LipsyncModelSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.models.lipsync_registry import LipsyncRegistry
from genserve.models.registry import ModelEntry, ModelKind


def model_folder(models: Path, model_id: str, with_model: bool = True) -> Path:
    folder = models / "lipsync" / model_id
    folder.mkdir(parents=True)
    if with_model:
        (folder / "model.onnx").write_bytes(b"onnx")
    return folder


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    model_folder(root, "alice")
    model_folder(root, "bob")
    model_folder(root, "no_model", with_model=False)  # no model.onnx: not a model
    model_folder(root, ".hidden")
    (root / "lipsync" / "stray.onnx").write_bytes(b"onnx")  # a file, not a model folder
    return root


def test_ids_come_from_folders_with_a_model_and_from_config(models: Path) -> None:
    catalog = LipsyncRegistry(models, {"configured": LipsyncModelSettings(), "alice": LipsyncModelSettings()})
    assert catalog.ids() == ["alice", "bob", "configured"]
    assert catalog.is_known("bob") and catalog.is_known("configured")
    assert not catalog.is_known("no_model")


def test_a_folder_added_while_running_is_found(models: Path) -> None:
    catalog = LipsyncRegistry(models, {})
    assert "carol" not in catalog.ids()
    model_folder(models, "carol")
    assert "carol" in catalog.ids() and catalog.is_known("carol")


def test_no_lipsync_folder_means_only_configured_ids(tmp_path: Path) -> None:
    assert LipsyncRegistry(tmp_path, {}).ids() == []
    assert LipsyncRegistry(tmp_path, {"x": LipsyncModelSettings()}).ids() == ["x"]


@pytest.mark.parametrize("model_id", ["unknown", "no_model", "../x", ".hidden", "a/b", "..", "bob/", ""])
def test_unknown_and_path_trick_ids_are_not_found(models: Path, model_id: str) -> None:
    # a sibling of the models folder that a "../x" trick could reach
    model_folder(models.parent, "x")
    (models / "lipsync" / "a" / "b").mkdir(parents=True)
    (models / "lipsync" / "a" / "b" / "model.onnx").write_bytes(b"onnx")
    catalog = LipsyncRegistry(models, {})
    assert not catalog.is_known(model_id)
    for call in (lambda: catalog.files(model_id), lambda: catalog.resolve(ModelKind.LIPSYNC, model_id)):
        with pytest.raises(GenserveError) as info:
            call()
        assert info.value.code is ErrorCode.MODEL_NOT_FOUND
        assert info.value.message == f"Model '{model_id}' not found"
        assert info.value.details == {"field": "model_id"}


def test_default_files_are_inside_the_model_folder(models: Path) -> None:
    files = LipsyncRegistry(models, {}).files("alice")
    folder = (models / "lipsync" / "alice").resolve()
    assert files.model_id == "alice"
    assert files.model == folder / "model.onnx"
    assert files.audio_encoder == folder / "audio_encoder.onnx"
    assert files.backgrounds == folder / "frames"
    assert files.crop_rects == folder / "crop_rects.json"
    assert (files.preload, files.preferred_gpu) == (False, -1)


def test_configured_relative_paths_resolve_inside_the_model_folder(models: Path) -> None:
    settings = LipsyncModelSettings(
        model_path=Path("onnx/lips.onnx"),
        audio_encoder_path=Path("../shared/audio.onnx"),  # elsewhere, but still inside the models folder
        background_dir=Path("video/bg"),
        crop_rects_path=Path("video/boxes.json"),
        preload=True,
        preferred_gpu=1,
    )
    files = LipsyncRegistry(models, {"alice": settings}).files("alice")
    folder = (models / "lipsync" / "alice").resolve()
    assert files.model == folder / "onnx" / "lips.onnx"
    assert files.audio_encoder == (models / "lipsync" / "shared" / "audio.onnx").resolve()
    assert files.backgrounds == folder / "video" / "bg"
    assert files.crop_rects == folder / "video" / "boxes.json"
    assert (files.preload, files.preferred_gpu) == (True, 1)


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("model_path", "../../../outside.onnx"),
        ("audio_encoder_path", "/etc/passwd"),
        ("background_dir", "../../../frames"),
        ("crop_rects_path", "../../../../crop_rects.json"),
    ],
)
def test_a_configured_path_escaping_the_models_folder_is_refused(models: Path, key: str, path: str) -> None:
    catalog = LipsyncRegistry(models, {"alice": LipsyncModelSettings(**{key: Path(path)})})
    with pytest.raises(GenserveError) as info:
        catalog.files("alice")
    assert info.value.code is ErrorCode.INVALID_INPUT
    assert f"lipsync.models.alice.{key}" in info.value.message
    assert "outside the models folder" in info.value.message
    assert info.value.details == {"field": key}


def test_resolve_gives_the_manager_an_entry_for_the_model_folder(models: Path) -> None:
    catalog = LipsyncRegistry(models, {"configured": LipsyncModelSettings()})
    assert catalog.resolve(ModelKind.LIPSYNC, "alice") == ModelEntry(
        ModelKind.LIPSYNC, "alice", models / "lipsync" / "alice"
    )
    assert catalog.resolve("lipsync", "configured").path == models / "lipsync" / "configured"
    with pytest.raises(GenserveError) as info:
        catalog.resolve(ModelKind.VAE, "alice")
    assert info.value.code is ErrorCode.INVALID_INPUT


def complete(folder: Path) -> None:
    (folder / "audio_encoder.onnx").write_bytes(b"onnx")
    (folder / "frames").mkdir()
    (folder / "crop_rects.json").write_text("[]")


def test_missing_names_the_first_file_a_model_lacks(models: Path) -> None:
    complete(models / "lipsync" / "alice")
    catalog = LipsyncRegistry(models, {"ghost": LipsyncModelSettings(), "alice": LipsyncModelSettings()})
    assert catalog.missing("alice") is None
    catalog.check_available("alice")
    assert catalog.missing("ghost") == (
        "model file lipsync/ghost/model.onnx is missing from the models folder "
        "(lipsync.models.ghost.model_path)"
    )
    # bob is found by its folder, not configured: no setting to name
    assert catalog.missing("bob") == (
        "audio encoder lipsync/bob/audio_encoder.onnx is missing from the models folder"
    )
    (models / "lipsync" / "alice" / "frames").rmdir()
    assert catalog.missing("alice") == (
        "background folder lipsync/alice/frames is missing from the models folder "
        "(lipsync.models.alice.background_dir)"
    )


def test_check_available_raises_the_spec_message_with_the_missing_file(models: Path) -> None:
    catalog = LipsyncRegistry(models, {"ghost": LipsyncModelSettings()})
    with pytest.raises(GenserveError) as info:
        catalog.check_available("ghost")
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND
    assert info.value.message.startswith("Model 'ghost' not found: model file ")
    with pytest.raises(GenserveError) as info:
        catalog.check_available("nobody")
    assert info.value.message == "Model 'nobody' not found"
