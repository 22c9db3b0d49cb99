from __future__ import annotations

import pytest
import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.devices import default_dtype, device_name, list_devices, resolve_device


def test_list_devices_always_has_the_cpu_with_its_memory() -> None:
    devices = {d.name: d for d in list_devices()}
    cpu = devices["cpu"]
    assert cpu.kind == "cpu"
    assert cpu.total_bytes > 0
    assert cpu.free_bytes is not None
    assert 0 < cpu.free_bytes <= cpu.total_bytes
    assert cpu.description
    assert cpu.to_dict()["name"] == "cpu"
    assert len([d for d in devices.values() if d.kind == "cuda"]) == torch.cuda.device_count()


def test_resolve_device_accepts_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected


@pytest.mark.parametrize("spec", ["cuda:7", "tpu", "cuda:x", "cuda:-1", ""])
def test_resolve_device_rejects_unavailable_devices_and_lists_the_real_ones(spec: str) -> None:
    if spec == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(GenserveError) as info:
        resolve_device(spec)
    assert info.value.code is ErrorCode.INVALID_INPUT
    assert repr(spec) in info.value.message
    assert "cpu" in info.value.details["available"]
    assert "available: auto, cpu" in info.value.message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_plain_cuda_is_rejected_without_a_gpu() -> None:
    with pytest.raises(GenserveError) as info:
        resolve_device("cuda")
    assert info.value.code is ErrorCode.INVALID_INPUT
    assert info.value.details["available"] == ["cpu"]


def test_device_name_gives_one_spelling_per_device() -> None:
    assert device_name(torch.device("cpu")) == "cpu"
    assert device_name(torch.device("cuda", 3)) == "cuda:3"
    assert device_name(torch.device("cuda")) == "cuda:0"


def test_default_dtype() -> None:
    assert default_dtype(torch.device("cpu"), "auto") is torch.float32
    assert default_dtype(torch.device("cuda", 0), "auto") is torch.bfloat16
    assert default_dtype("cpu") is torch.float32
    assert default_dtype(torch.device("cpu"), "bfloat16") is torch.bfloat16
    assert default_dtype(torch.device("cuda", 0), "float32") is torch.float32
    assert default_dtype(torch.device("cpu"), "float16") is torch.float16
    with pytest.raises(GenserveError) as info:
        default_dtype(torch.device("cpu"), "int8")
    assert info.value.code is ErrorCode.INVALID_INPUT
    assert "'int8'" in info.value.message
