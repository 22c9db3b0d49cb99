"""Filling a model built from a derived config with the tensors of one single file.

The model is built with empty parameters (accelerate's ``init_empty_weights``: nothing is
allocated), then each tensor is read from the file straight onto the target device, dequantised
(fp8 with its scale; ComfyUI's int8 with its scale, un-rotated where convrot) or cast to the
compute dtype there, and assigned. So the peak is the model once, in its final dtype, on its
device; never a whole fp32 copy in RAM.

The file must match the model exactly: a missing or a leftover key refuses the load, naming the
file and the first keys each way, and nothing half-loaded is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import init_empty_weights

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats import fp8, int8_convrot
from genserve.models.formats.safetensors_header import Header, iter_tensors

SHOWN_KEYS = 5

Rename = Callable[[str], str | None]  # a file key -> the module's key; None: not a weight (a marker)


def load_single_file(
    build: Callable[[], torch.nn.Module],
    header: Header,
    device: torch.device,
    dtype: torch.dtype,
    rename: Rename,
    field_name: str,
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> torch.nn.Module:
    """``build()`` filled from ``header``'s file on ``device`` in ``dtype``.

    ``rename`` maps the file's keys to the module's; ``convert`` (optional) rewrites the whole
    renamed dict at once, for layouts that need more than a rename (the Wan VAE's).
    """
    int8 = int8_convrot.detect(header, field_name)  # first: it names formats fp8.detect cannot read
    scheme = fp8.detect(header, field_name)
    with init_empty_weights():
        module = build()
    expected = set(module.state_dict())
    wanted = [
        key
        for key in header.names()
        if not scheme.is_extra(key) and not int8.is_extra(key) and rename(key) is not None
    ]
    scales = _scales(header, scheme, device)
    int8_scales = int8.scales(header, device)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in iter_tensors(header.path, wanted, device):
        name = rename(key)
        assert name is not None
        if key in int8.layers:
            tensor = int8_convrot.dequantize(tensor, int8_scales[key], int8.layers[key].config, dtype)
        elif tensor.is_floating_point():
            tensor = fp8.dequantize(tensor, scales.get(key), dtype)
        state[name] = tensor
    if convert is not None:
        state = convert(state)
    _check_keys(header, expected, set(state), field_name)
    module.load_state_dict(state, strict=True, assign=True)
    return module.to(device).eval().requires_grad_(False)


def _scales(header: Header, scheme: fp8.Fp8Scheme, device: torch.device) -> dict[str, torch.Tensor]:
    if not scheme.scales:
        return {}
    by_scale = {scale: weight for weight, scale in scheme.scales.items()}
    return {by_scale[key]: tensor for key, tensor in iter_tensors(header.path, list(by_scale), device)}


def _check_keys(header: Header, expected: set[str], found: set[str], field_name: str) -> None:
    missing, leftover = sorted(expected - found), sorted(found - expected)
    if not missing and not leftover:
        return
    parts = []
    if missing:
        parts.append(f"missing {_some(missing)}")
    if leftover:
        parts.append(f"not in the model {_some(leftover)}")
    raise GenserveError(
        ErrorCode.MODEL_NOT_FOUND,
        f"{field_name}: {header.path.name} does not match the model it was taken for: " + "; ".join(parts),
        field=field_name,
    )


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return f"{shown} (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else shown
