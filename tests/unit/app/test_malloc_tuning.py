"""The glibc switch behind ``server.keep_freed_memory_mb``."""

from __future__ import annotations

import asyncio
import ctypes.util
import platform
import subprocess
import sys

import pytest

from genserve.app.malloc_tuning import IdleTrimmer, keep_freed_memory


def test_zero_leaves_the_allocator_alone() -> None:
    assert keep_freed_memory(0) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_thresholds() -> None:
    assert ctypes.util.find_library("c") is not None
    assert keep_freed_memory(64) is True
    assert keep_freed_memory(1024) is True  # what the server sets by default


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_a_trim_gives_a_burst_s_memory_back() -> None:
    """In a process of its own, as the server: 400 MB freed stays resident until the trim."""
    script = """
import gc
from genserve.app.malloc_tuning import keep_freed_memory, trim

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

keep_freed_memory(1024)
before = rss_mb()
burst = [b"x" * (256 * 1024) for _ in range(1600)]
during = rss_mb()
del burst
gc.collect()
freed = rss_mb()
assert trim()
print(before, during, freed, rss_mb())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    before, during, freed, trimmed = (float(x) for x in done.stdout.split())
    assert during - before > 350
    assert freed - before > 300  # kept by the raised thresholds
    assert trimmed - before < 50  # and back after the trim


def test_the_idle_trimmer_trims_only_while_idle() -> None:
    async def run(busy: bool) -> int:
        trimmer = IdleTrimmer(lambda: busy, idle_s=0.1, poll_s=0.02)
        trimmer.start()
        await asyncio.sleep(0.5)
        await trimmer.stop()
        return trimmer.trims

    assert asyncio.run(run(busy=True)) == 0
    if platform.libc_ver()[0] == "glibc":
        assert asyncio.run(run(busy=False)) >= 2
