"""Keeps glibc from handing big buffers back to the OS after every request.

glibc serves allocations above its mmap threshold (at most 32 MB by its own rules) with fresh
pages from the OS and returns them on free, so every large message pays for thousands of page
faults again. protobuf's arenas allocate such blocks for every 15 MB lip-sync request: building,
parsing or reading the message costs 30-60 ms that way, 5-10 ms when the heap keeps the memory
(measured here). Raising the thresholds trades a higher resident high-water mark, which a model
server has anyway, for that time. Other C libraries: nothing to do, nothing done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MIB = 1024 * 1024


def keep_freed_memory(limit_mb: int) -> bool:
    """Serve allocations up to ``limit_mb`` from the heap and keep that much freed memory; 0 = off."""
    if limit_mb <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): its allocator has no such switch
    size = min(limit_mb * MIB, 2**31 - 1)
    done = bool(mallopt(_M_MMAP_THRESHOLD, size)) and bool(mallopt(_M_TRIM_THRESHOLD, size))
    if not done:
        log.warning("could not raise the C library's mmap/trim thresholds to %d MiB", limit_mb)
    return done
