"""The allocator settings of the CLI's process (sschsr_deploy.allocator): applied with glibc, the user's environment
wins, harmless without a libc; and what they are for — large blocks reused instead of page-faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from sschsr_deploy.allocator import keep_large_blocks, limit_malloc_arenas, tune_allocator

ROOT = Path(__file__).resolve().parents[1]
GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


def test_user_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert keep_large_blocks() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=4096:glibc.malloc.arena_max=1")
    assert tune_allocator() == {"arenas": False, "large_blocks": False}


def test_no_libc_found_is_harmless(monkeypatch):
    import ctypes.util

    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert tune_allocator() == {"arenas": False, "large_blocks": False}


_WHERE = """
import sys
import numpy as np
from sschsr_deploy.allocator import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else None
def in_heap(addr):
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            if lo <= addr < hi:
                return True
    return False
a = np.ones(8 << 20)  # 64 MB: above glibc's largest own mmap threshold (32 MB)
print(in_heap(a.ctypes.data), applied)
"""


@GLIBC
def test_large_blocks_come_from_the_heap():
    """A 64 MB block: glibc's default gives it a mapping of its own (unmapped on free, faulted in again next time);
    with the settings it comes from the heap, where a freed block is reused."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}

    def run(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", _WHERE, mode], capture_output=True, text=True, env=env,
                              timeout=120, check=True).stdout.strip()

    assert run("default") == "False None"
    assert run("tuned") == "True {'arenas': True, 'large_blocks': True}"
