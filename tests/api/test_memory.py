"""Keeping the heap from growing: a fixed mmap threshold at setup, a trim after each prediction.

The effect on a long-running server is measured by the soak in tests/test_robustness.py.
"""

import ctypes.util
import platform

import pytest

from musicgen_cog.api import memory


class RecordingLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the controls are glibc's")
def test_on_glibc_the_real_c_library_offers_both_controls():
    libc = memory._libc()
    assert libc is not None
    assert libc.mallopt(memory.M_MMAP_THRESHOLD, memory.LARGE_BLOCK) == 1  # glibc answers 1 on success


def test_setup_fixes_the_threshold_at_1_mib_and_each_prediction_trims_every_arena(monkeypatch):
    libc = RecordingLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    memory.fix_mmap_threshold()
    memory.release_freed_memory()
    assert libc.calls == [("mallopt", -3, 1 << 20), ("malloc_trim", 0)]


def test_without_glibc_nothing_is_called(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    memory._libc.cache_clear()
    try:
        assert memory._libc() is None
        memory.fix_mmap_threshold()  # neither may reach for a missing function
        memory.release_freed_memory()
    finally:
        memory._libc.cache_clear()
