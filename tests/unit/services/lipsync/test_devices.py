"""lipsync_devices: one device rule for requests, preload and LoadModel, on hosts with and without GPUs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from genserve.config.lipsync import LipsyncModelSettings
from genserve.errors import ErrorCode, GenserveError
from genserve.models.lipsync_registry import LipsyncRegistry
from genserve.services.lipsync import devices as lipsync_devices
from genserve.services.lipsync.devices import configured_device, requested_device


@pytest.fixture
def catalog(tmp_path: Path) -> LipsyncRegistry:
    # Configured ids are known without files: the device rule reads only the settings.
    return LipsyncRegistry(
        tmp_path, {"auto": LipsyncModelSettings(), "on1": LipsyncModelSettings(preferred_gpu=1)}
    )


def host(monkeypatch: pytest.MonkeyPatch, ids: list[int]) -> None:
    monkeypatch.setattr(lipsync_devices, "gpu_ids", lambda: ids)
    monkeypatch.setattr(lipsync_devices, "_warned", set())


def refused(catalog: LipsyncRegistry, preferred_gpu: int) -> str:
    with pytest.raises(GenserveError) as info:
        requested_device(catalog, "auto", preferred_gpu)
    assert info.value.code is ErrorCode.INVALID_INPUT and info.value.details == {"field": "preferred_gpu"}
    return info.value.message


def test_without_gpus_an_unset_preferred_gpu_is_automatic(
    catalog: LipsyncRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    host(monkeypatch, [])
    assert requested_device(catalog, "auto", 0) is None  # proto3's unset int32
    assert requested_device(catalog, "auto", -1) is None
    message = refused(catalog, 1)
    assert message.startswith("Invalid GPU id 1: available GPUs: none (CPU only); -1 picks automatically")


def test_with_gpus_an_id_is_that_gpu(catalog: LipsyncRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch, [0, 1])
    assert requested_device(catalog, "auto", 0) == "cuda:0"
    assert requested_device(catalog, "auto", 1) == "cuda:1"
    assert requested_device(catalog, "on1", -1) == "cuda:1"  # automatic: the config's choice first
    assert configured_device(catalog, "on1") == "cuda:1"
    assert configured_device(catalog, "auto") is None
    assert "Invalid GPU id 2: available GPUs: 0, 1" in refused(catalog, 2)


@pytest.mark.parametrize("ids", [[], [0]])
def test_a_configured_gpu_that_is_missing_falls_back_with_one_warning(
    catalog: LipsyncRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    ids: list[int],
) -> None:
    host(monkeypatch, ids)
    with caplog.at_level(logging.WARNING, logger="genserve.lipsync"):
        assert configured_device(catalog, "on1") is None
        assert configured_device(catalog, "on1") is None
        assert requested_device(catalog, "on1", -1) is None
    [warning] = [r.getMessage() for r in caplog.records]
    assert "lip-sync model on1: lipsync.models.on1.preferred_gpu is 1" in warning
    assert "choosing the device automatically" in warning
