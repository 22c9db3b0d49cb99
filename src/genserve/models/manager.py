"""Keeps models in memory between requests: loads on demand, pins while in use, evicts by policy.

One manager holds every kind; each kind belongs to a pool (pools.py) whose count limit, memory
budget per device, eviction policy, idle timeout and capacity wait apply to that pool's models.

Locking, so that one slow model never stalls the others:

* one manager lock (a Condition) guards the table and is held only for bookkeeping; never
  during a loader call, a ``release()`` or the caller's ``with`` block;
* one lock per model serialises loading and unloading of that model, so eight requests for a
  model that is not loaded yet load it once, while other models load at the same time.

Lifecycle as in MLServer: a model is registered as loading (its estimated size is reserved, so
concurrent loads cannot overbook a device) and a failed load takes it out again and re-raises.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from genserve.errors import ErrorCode, GenserveError, without_paths
from genserve.models.devices import default_dtype, device_name, resolve_device
from genserve.models.idle import IdleReaper
from genserve.models.kinds import parse_kind
from genserve.models.loaders.base import LoadedModel, Loader
from genserve.models.memory import HOST, MemoryMode, keep_fp8, offload, onload, place
from genserve.models.placement import Placement
from genserve.models.pools import DEFAULT_POOL, Eviction, Pool, PoolKeys, PoolTable
from genserve.models.registry import WEIGHT_SUFFIXES, ModelEntry, ModelKind, ModelRegistry
from genserve.models.slots import ModelSlot as _Slot
from genserve.models.slots import ModelStats, release
from genserve.models.slots import SlotState as _State
from genserve.models.unloading import unload_slot
from genserve.models.waiting import RoomWaiter

log = logging.getLogger(__name__)


class ModelManager:
    """The only owner of loaded models; services borrow them through ``use()``."""

    def __init__(
        self,
        registry: ModelRegistry,
        loaders: Mapping[ModelKind, Loader],
        *,
        max_loaded: int = 8,
        memory_budget_bytes: Mapping[str, int] | None = None,
        default_device: str = "auto",
        dtype: str = "auto",
        eviction: Eviction = "lru",
        idle_timeout_s: float = 0.0,
        capacity_wait_s: float = 0.0,
        pools: Sequence[Pool] = (),
        default_keys: PoolKeys | None = None,
        memory_modes: Mapping[ModelKind, MemoryMode] | None = None,
        fp8_storage: str = "auto",
    ) -> None:
        """``max_loaded`` .. ``capacity_wait_s`` are the default pool's rules (every kind that no
        pool in ``pools`` names); ``pools`` give other kinds rules of their own. ``memory_modes``
        forces a kind's memory mode (the rest: auto); ``fp8_storage`` is on, off or auto (memory.py)."""
        self.registry = registry
        self._loaders: dict[ModelKind, Loader] = {ModelKind(k): v for k, v in loaders.items()}
        default = Pool(
            DEFAULT_POOL,
            frozenset(),
            max_loaded,
            dict(memory_budget_bytes or {}),
            eviction,
            idle_timeout_s,
            capacity_wait_s,
            default_keys or PoolKeys(),
        )
        self._pools = PoolTable(default, pools)
        # Resolved now so that a bad setting stops the server at start-up, naming the value.
        self._default_device = resolve_device(default_device)
        self._dtype = dtype
        default_dtype(self._default_device, dtype)
        self._cond = threading.Condition(threading.Lock())
        self._slots: dict[tuple[str, str], _Slot] = {}
        slots = lambda: list(self._slots.values())  # noqa: E731
        self._placement = Placement(self._pools, slots, self._cond, memory_modes or {}, fp8_storage)
        self._clock = itertools.count(1)
        self._room = RoomWaiter(self._cond)  # wakes loads waiting for room when a model is let go
        self._reaper = IdleReaper(self)

    # Public API -------------------------------------------------------------------------------

    @contextmanager
    def use(
        self,
        kind: ModelKind | str,
        name: str,
        device: str | None = None,
        *,
        on_load: Callable[[float], None] | None = None,
        count: bool = True,
        check_cancelled: Callable[[], None] | None = None,
    ) -> Iterator[Any]:
        """Pinned for the whole block, so eviction and unload wait for it.

        The block counts as one request timed as a whole, unless ``count`` is False: then the
        caller times only the part it calls inference and reports it with ``record``.
        ``on_load(ms)`` is called only in the request that actually loaded the model. In a pool
        with a capacity wait, ``check_cancelled`` (which raises) ends a wait for room early.
        """
        owner, entry = threading.get_ident(), self._entry(kind, name)
        slot, loaded = self._room.retry(
            lambda: self._acquire(entry, device, owner, pin=True, on_load=on_load),
            self._pools.of[entry.kind],
            entry.label,
            check_cancelled=check_cancelled,
        )
        start = time.perf_counter()
        try:
            onload(slot, loaded, self._cond)
            try:
                yield loaded.model
            finally:
                offload(slot, loaded, self._cond)
        finally:
            self._unpin(slot, owner, (time.perf_counter() - start) * 1000.0, count=count)

    def record(self, kind: ModelKind | str, name: str, inference_ms: float, requests: int = 1) -> None:
        """Count requests served by a model, for callers that time inference themselves."""
        slot = self._find(kind, name)
        if slot is None:
            return
        with self._cond:
            slot.request_count += requests
            slot.total_ms += inference_ms
            slot.last_used = time.time()

    def load(
        self,
        kind: ModelKind | str,
        name: str,
        device: str | None = None,
        *,
        on_load: Callable[[float], None] | None = None,
        wait_s: float | None = None,
    ) -> ModelStats:
        """Warm a model ahead of requests; a loaded model is left where it is (idempotent).

        ``wait_s`` shortens the pool's capacity wait (a caller's own deadline).
        """
        owner, entry = threading.get_ident(), self._entry(kind, name)
        slot, _ = self._room.retry(
            lambda: self._acquire(entry, device, owner, pin=False, on_load=on_load),
            self._pools.of[entry.kind],
            entry.label,
            wait_s=wait_s,
        )
        with self._cond:
            return slot.snapshot()

    def unload(self, kind: ModelKind | str, name: str, timeout: float | None = None) -> bool:
        """Unload once the current users are done; new users wait, then load it again.

        Returns False when the model is not loaded. If its users do not finish within
        ``timeout`` seconds, raises GenserveError(TIMEOUT) and the model stays loaded and usable.
        """
        slot = self._find(kind, name)
        return slot is not None and self._unload_slot(slot, timeout)

    @property
    def max_loaded(self) -> int:  # the default pool's
        return self._pools.default.max_loaded

    @property
    def memory_budgets(self) -> dict[str, int]:  # the default pool's
        return self.budgets(self._pools.default)

    def pool(self, kind: ModelKind | str) -> Pool:
        return self._pools.of[parse_kind(kind)]

    @property
    def pools(self) -> list[Pool]:  # the default one first
        return self._pools.pools

    def budgets(self, pool: Pool) -> dict[str, int]:
        """``pool``'s per-device budgets in bytes, keyed like loaded models' devices."""
        return dict(self._pools.budgets[pool.name])

    def start_idle_reaper(self) -> None:
        """Unload models idle past their pool's ``idle_timeout_s``, in the background, until close()."""
        self._reaper.start()

    def unload_idle(self, idle_s: float | None = None) -> list[str]:
        """One reaper pass: unloads the models idle past their pool's timeout (or ``idle_s``)."""
        return self._reaper.sweep(idle_s)

    def is_loaded(self, kind: ModelKind | str, name: str) -> bool:
        slot = self._find(kind, name)
        with self._cond:
            return slot is not None and slot.in_memory

    def stats(self) -> list[ModelStats]:
        with self._cond:
            slots = sorted(self._slots.values(), key=lambda s: s.entry.key)
            return [s.snapshot() for s in slots if s.load_count or s.in_memory]

    def loaded(self) -> list[ModelStats]:
        return [s for s in self.stats() if s.loaded]

    def close(self) -> None:
        """Unload everything, waiting for requests still inside ``use()``."""
        self._reaper.stop()
        with self._cond:
            slots = list(self._slots.values())
        for slot in slots:
            self._unload_slot(slot, None)

    # Acquire and load -------------------------------------------------------------------------

    def _entry(self, kind: ModelKind | str, name: str) -> ModelEntry:
        return self.registry.resolve(parse_kind(kind), name)

    def _slot(self, entry: ModelEntry) -> _Slot:
        with self._cond:
            slot = self._slots.get(entry.key)
            if slot is None:
                slot = self._slots[entry.key] = _Slot(entry)
            elif not slot.in_memory:
                slot.entry = entry  # a file may have been replaced by a folder of the same name
            return slot

    def _acquire(
        self,
        entry: ModelEntry,
        device: str | None,
        owner: int,
        *,
        pin: bool,
        on_load: Callable[[float], None] | None,
    ) -> tuple[_Slot, LoadedModel]:
        target = resolve_device(device) if device is not None else self._default_device
        explicit = device is not None and device.strip().lower() != "auto"
        slot = self._slot(entry)
        while True:
            with self._cond:
                # A thread that already holds this model may nest use() even while an unload
                # waits; making it wait would deadlock it against its own outer block.
                while slot.state is _State.UNLOADING and owner not in slot.pins:
                    self._cond.wait()
                if slot.in_memory:
                    if explicit and slot.device != device_name(target):
                        raise GenserveError(
                            ErrorCode.INVALID_INPUT,
                            f"device: {slot.label} is loaded on {slot.device}, not {device_name(target)}; "
                            "unload it first to move it",
                            field="device",
                        )
                    self._pin(slot, owner if pin else None)
                    assert slot.loaded is not None
                    return slot, slot.loaded
            with slot.load_lock:
                with self._cond:
                    ready = slot.state is not _State.UNLOADED
                if not ready:
                    slot, loaded = self._load(slot, target, owner if pin else None)
                    if on_load is not None:
                        try:
                            on_load(slot.load_time_ms)
                        except BaseException:
                            if pin:  # the caller never gets the model, so it must not stay pinned
                                self._unpin(slot, owner, 0.0, count=False)
                            raise
                    return slot, loaded
            # Someone else loaded it while this thread waited for the lock: go round and pin it.

    def _pin(self, slot: _Slot, pin_for: int | None) -> None:
        if pin_for is not None:
            slot.pins[pin_for] += 1
        slot.touched = next(self._clock)

    def _unpin(self, slot: _Slot, owner: int, elapsed_ms: float, *, count: bool = True) -> None:
        with self._cond:
            slot.pins[owner] -= 1
            if slot.pins[owner] <= 0:
                del slot.pins[owner]
            if count:
                slot.request_count += 1
                slot.total_ms += elapsed_ms
            slot.last_used = time.time()
            slot.touched = next(self._clock)
            if not slot.pins:
                self._room.released()

    def _load(self, slot: _Slot, target: torch.device, pin_for: int | None) -> tuple[_Slot, LoadedModel]:
        """Called with ``slot.load_lock`` held and the slot unloaded."""
        entry = slot.entry
        loader = self._loaders.get(entry.kind)
        if loader is None:
            served = ", ".join(k.value for k in self._loaders) or "none"
            raise GenserveError(
                ErrorCode.INVALID_INPUT,
                f"no loader for {entry.kind.label}s ({entry.kind.value}); this server loads: {served}",
                kind=entry.kind.value,
            )
        dev = device_name(target)
        dtype = default_dtype(target, self._dtype)
        estimate, narrow = self._placement.estimate(slot, dev, target, dtype)
        with self._cond:
            mode = self._placement.mode(slot, dev, target, estimate)
            reserved = estimate if mode is MemoryMode.RESIDENT else 0  # the others load on the host
            victims = self._make_room(slot, dev, reserved)
            slot.state, slot.device, slot.memory_bytes = _State.LOADING, dev, reserved
        self._release_all(victims)
        start = time.perf_counter()
        try:
            # Models narrowed to fp8 load on the host first, so bf16 weights never need the device.
            loaded = loader(entry, target if mode is MemoryMode.RESIDENT and not narrow else HOST, dtype)
            if not isinstance(loaded, LoadedModel):
                raise TypeError(f"loader returned {type(loaded).__name__}, not LoadedModel")
            narrow = narrow and keep_fp8(loaded)
            on_device, mode = place(loaded, target, mode)
        except BaseException as exc:
            with self._cond:
                slot.state, slot.device, slot.memory_bytes = _State.UNLOADED, None, 0
                self._room.released()  # its reserved room is free again
            if isinstance(exc, GenserveError) or not isinstance(exc, Exception):
                raise  # a GenserveError already names the problem; Ctrl-C stays Ctrl-C
            message = without_paths(f"failed to load {slot.label}: {type(exc).__name__}: {exc}")
            raise GenserveError(ErrorCode.INTERNAL, message, kind=entry.kind.value, name=entry.name) from exc
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        with self._cond:
            slot.loaded, slot.state, slot.mode, slot.target = loaded, _State.LOADED, mode.value, dev
            slot.fp8 = narrow
            where = {MemoryMode.OFFLOADED: HOST, MemoryMode.STREAMED: target}.get(mode, loaded.device)
            slot.device, slot.memory_bytes = device_name(where), int(on_device)
            slot.load_time_ms, slot.load_count = elapsed_ms, slot.load_count + 1
            self._pin(slot, pin_for)
            extra = self._trim_to_budget(slot)
        where = f"{slot.device} ({mode.value})"
        log.info("loaded %s on %s: %d bytes, %.0f ms", slot.label, where, slot.memory_bytes, elapsed_ms)
        self._release_all(extra)
        return slot, loaded

    # Memory modes -----------------------------------------------------------------------------

    def plan(self, kind: ModelKind | str, name: str) -> tuple[str, int, bool]:
        """(the memory mode a load now would get, the bytes it would take, whether it would keep
        fp8) on the default device."""
        entry, target, dev = self._entry(kind, name), self._default_device, device_name(self._default_device)
        with self._cond:
            slot = self._slots.get(entry.key) or _Slot(entry)
        size, fp8 = self._placement.estimate(slot, dev, target, default_dtype(target, self._dtype))
        with self._cond:
            return self._placement.mode(slot, dev, target, size).value, size, fp8

    # Capacity ---------------------------------------------------------------------------------

    def _make_room(self, slot: _Slot, dev: str, needed: int) -> list[LoadedModel]:
        """Evict what the slot's pool picks for count and budget; it raises before anything is evicted."""
        chosen = self._pools.victims_for(list(self._slots.values()), slot, dev, needed)
        return [self._evict(s, for_room=slot.label) for s in chosen]

    def _trim_to_budget(self, slot: _Slot) -> list[LoadedModel]:
        chosen = self._pools.over_budget(list(self._slots.values()), slot)
        return [self._evict(s, for_room=slot.label) for s in chosen]

    def _evict(self, slot: _Slot, for_room: str | None = None) -> LoadedModel:
        """Take a model out of the table (manager lock held); the caller releases it after unlocking."""
        if for_room is None:
            log.info("unloading %s from %s", slot.label, slot.device)
        else:
            policy = self._pools.of[slot.entry.kind].eviction
            log.info("evicting %s from %s (%s) for %s", slot.label, slot.device, policy, for_room)
        return slot.take_out(evicted=for_room is not None)

    @staticmethod
    def _release_all(models: list[LoadedModel]) -> None:
        while models:
            release(models.pop())

    # Unload -----------------------------------------------------------------------------------

    def _find(self, kind: ModelKind | str, name: str) -> _Slot | None:
        """Finds loaded models whose files were deleted meanwhile too, so they can still be unloaded."""
        kind = parse_kind(kind)
        try:
            names = [self._entry(kind, name).name]
        except GenserveError as exc:
            if exc.code is not ErrorCode.MODEL_NOT_FOUND:
                raise
            names = [name, *(name.removesuffix(s) for s in WEIGHT_SUFFIXES if name.endswith(s))]
        with self._cond:
            return next((self._slots[(kind.value, n)] for n in names if (kind.value, n) in self._slots), None)

    def _unload_slot(self, slot: _Slot, timeout: float | None) -> bool:
        return unload_slot(slot, timeout, self._cond, self._evict, self._room)
