"""The glibc switch behind ``server.keep_freed_memory_mb``."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from genserve.app.malloc_tuning import keep_freed_memory


def test_zero_leaves_the_allocator_alone() -> None:
    assert keep_freed_memory(0) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_thresholds() -> None:
    assert ctypes.util.find_library("c") is not None
    assert keep_freed_memory(64) is True
    assert keep_freed_memory(1024) is True  # what the server sets by default
