"""Keeps glibc from handing big buffers back to the OS after every request.

glibc serves allocations above its mmap threshold (at most 32 MB by its own rules) with fresh
pages from the OS and returns them on free, so every large message pays for thousands of page
faults again. protobuf's arenas allocate such blocks for every 15 MB lip-sync request: building,
parsing or reading the message costs 30-60 ms that way, 5-10 ms when the heap keeps the memory
(measured here). Raising the thresholds trades a higher resident high-water mark for that time.

The high-water mark must not stay for good, though: after a burst (or a flood of malformed
requests) the heap holds what the burst freed. ``IdleTrimmer`` hands it back with
``malloc_trim`` once the server has been idle for a while; steady traffic never pauses that long,
so it keeps the speed. Other C libraries: nothing to do, nothing done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MIB = 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory(limit_mb: int) -> bool:
    """Serve allocations up to ``limit_mb`` from the heap and keep that much freed memory; 0 = off."""
    if limit_mb <= 0:
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False  # not glibc (musl, macOS): its allocator has no such switch
    size = min(limit_mb * MIB, 2**31 - 1)
    done = bool(mallopt(_M_MMAP_THRESHOLD, size)) and bool(mallopt(_M_TRIM_THRESHOLD, size))
    if not done:
        log.warning("could not raise the C library's mmap/trim thresholds to %d MiB", limit_mb)
    return done


def trim() -> bool:
    """Return the heap's free memory to the OS now; False where the C library cannot."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    return bool(malloc_trim(0)) if malloc_trim is not None else False


class IdleTrimmer:
    """Trims every ``idle_s`` while ``busy()`` has stayed false that long; a trim of a heap with
    little free memory costs a few milliseconds, a busy server is never trimmed."""

    def __init__(self, busy: Callable[[], bool], idle_s: float, poll_s: float = 1.0) -> None:
        self.busy, self.idle_s, self.poll_s = busy, idle_s, poll_s
        self.trims = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.idle_s > 0 and getattr(_libc(), "malloc_trim", None) is not None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        since = time.monotonic()  # the last moment busy, or the last trim
        while True:
            await asyncio.sleep(self.poll_s)
            now = time.monotonic()
            if self.busy():
                since = now
            elif now - since >= self.idle_s:
                await asyncio.to_thread(trim)
                self.trims, since = self.trims + 1, time.monotonic()
