"""How a model sits in memory on its device: the mode a load gets, from the pool's budget, the
device's free memory and the model's size in the compute dtype.

- ``resident``: on the device from load to unload (the default, and all a CPU needs).
- ``offloaded`` (model-level): kept in host RAM and moved onto the device only while a request
  uses it, so the text encoder leaves the GPU while sampling runs.
- ``streamed`` (block streaming, diffusers' group offloading): a transformer larger than the room
  on its device keeps its blocks in host RAM and brings them onto the device one group at a time.

``auto`` (the default) picks the first that fits: resident when the model fits beside what the
pool keeps on the device plus the largest of its offloaded models (they come on in turn); offloaded
when it fits beside what the pool keeps there; streamed (transformers only) otherwise.
Each mode can be forced in config (``models.memory_mode``, and per kind ``models.memory_modes``);
a forced mode a kind cannot take is refused at start-up.

fp8 storage (``models.fp8_storage``) is a further lever for the transformer: an unscaled fp8 file
can keep its weights in fp8 (half of bf16) and compute in the compute dtype. ``auto`` does so
wherever the bf16 weights would not be resident: resident in fp8 beats bf16 brought over the bus,
and fp8 brought over the bus moves half the bytes; ``on`` always, ``off`` never.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import StrEnum

import torch

from genserve.errors import ErrorCode, GenserveError
from genserve.models.formats.sizes import loaded_bytes, plain_fp8
from genserve.models.kinds import ModelEntry, ModelKind
from genserve.models.loaders.base import LoadedModel
from genserve.models.slots import ModelSlot


class MemoryMode(StrEnum):
    AUTO = "auto"
    RESIDENT = "resident"
    OFFLOADED = "offloaded"
    STREAMED = "streamed"


# What each kind can do: the pipeline's torch modules move; only the transformer streams by blocks.
ABLE = {
    ModelKind.DIFFUSION: {MemoryMode.RESIDENT, MemoryMode.OFFLOADED, MemoryMode.STREAMED},
    ModelKind.TEXT_ENCODER: {MemoryMode.RESIDENT, MemoryMode.OFFLOADED},
    ModelKind.VAE: {MemoryMode.RESIDENT, MemoryMode.OFFLOADED},
    ModelKind.CONTROLNET: {MemoryMode.RESIDENT, MemoryMode.OFFLOADED},
    ModelKind.MODEL_PATCH: {MemoryMode.RESIDENT, MemoryMode.OFFLOADED},
}
HOST = torch.device("cpu")  # where offloaded and streamed weights wait


def check_forced(modes: dict[ModelKind, MemoryMode]) -> None:
    for kind, mode in modes.items():
        allowed = ABLE.get(kind, {MemoryMode.RESIDENT})
        if mode is not MemoryMode.AUTO and mode not in allowed:
            choices = ", ".join(sorted(m.value for m in allowed))
            message = f"{mode.value} is not possible for {kind.label}s ({choices})"
            raise GenserveError(ErrorCode.INVALID_INPUT, f"models.memory_modes.{kind.value}: {message}")


def choose(
    kind: ModelKind,
    forced: MemoryMode,
    size: int,
    room: int | None,
    held: int,
    peak: int = 0,
    on_host: bool = False,
) -> MemoryMode:
    """The mode for a model of ``size`` bytes when ``room`` bytes (None: unbounded) are on the
    device for its pool, ``held`` of them kept by other models of the pool and ``peak`` more needed
    while the largest of its offloaded models is in use. On the host itself (``on_host``: a CPU)
    there is nowhere to offload to: auto is resident there, and a budget that does not fit is
    refused by the manager, naming it."""
    allowed = ABLE.get(kind, {MemoryMode.RESIDENT})
    if forced is not MemoryMode.AUTO:
        return forced if forced in allowed else MemoryMode.RESIDENT
    if on_host or fits(size, room, held, peak):
        return MemoryMode.RESIDENT
    if fits(size, room, held) and MemoryMode.OFFLOADED in allowed:
        return MemoryMode.OFFLOADED
    if MemoryMode.STREAMED in allowed:
        return MemoryMode.STREAMED
    return MemoryMode.RESIDENT  # what cannot fit is refused by the budget, naming it


def fits(size: int, room: int | None, held: int, peak: int = 0) -> bool:
    return room is None or size + held + peak <= room


def fp8_size(
    policy: str, entry: ModelEntry, dtype: torch.dtype, resident: Callable[[int], bool]
) -> int | None:
    """The bytes of ``entry`` kept in fp8 when ``policy`` (on, off, auto) keeps it so, else None.
    ``resident`` says whether a size would be resident; auto keeps fp8 where bf16 would not be."""
    if entry.storage is not None:  # asked for (UNETLoader's weight_dtype): whatever the policy
        return loaded_bytes(entry, dtype, keep_fp8=True)
    if policy == "off" or entry.kind is not ModelKind.DIFFUSION or not plain_fp8(entry):
        return None
    if policy == "on" or not resident(loaded_bytes(entry, dtype)):
        return loaded_bytes(entry, dtype, keep_fp8=True)
    return None


def keep_fp8(loaded: LoadedModel) -> bool:
    """Narrow a model to fp8 storage where its loader offers it; whether it did."""
    if loaded.narrow is None:
        return False
    loaded.memory_bytes = loaded.narrow()
    return True


def free_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device; None on the CPU (host RAM is where every mode keeps weights)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def place(loaded: LoadedModel, target: torch.device, mode: MemoryMode) -> tuple[int, MemoryMode]:
    """Apply ``mode`` to a model loaded on the host; (its bytes on the device, the mode it got).
    A model whose loader cannot do the mode is moved whole onto the device (resident)."""
    if mode is MemoryMode.STREAMED and loaded.stream is not None:
        return loaded.stream(target), mode
    if mode is MemoryMode.OFFLOADED and loaded.move is not None:
        return loaded.memory_bytes, mode
    if loaded.device != target and loaded.move is not None:
        loaded.move(target)
        loaded.device = target
    return loaded.memory_bytes, MemoryMode.RESIDENT


def onload(slot: ModelSlot, loaded: LoadedModel, lock: threading.Condition) -> None:
    """An offloaded model comes onto its device for the first of its concurrent users; ``lock``
    (the manager's) guards the slot's bookkeeping, never the move itself."""
    if slot.mode != MemoryMode.OFFLOADED.value or loaded.move is None or slot.target is None:
        return
    with slot.place_lock:
        slot.on_device += 1
        if slot.on_device == 1:
            loaded.move(torch.device(slot.target))
            with lock:
                slot.device = slot.target


def offload(slot: ModelSlot, loaded: LoadedModel, lock: threading.Condition) -> None:
    """...and goes back to the host after the last of them."""
    if slot.mode != MemoryMode.OFFLOADED.value or loaded.move is None:
        return
    with slot.place_lock:
        slot.on_device -= 1
        if slot.on_device == 0:
            loaded.move(HOST)
            with lock:
                slot.device = "cpu"
