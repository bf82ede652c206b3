"""glibc's allocator, set for a process that runs the network: few heap arenas, large blocks kept for reuse.

Two settings, both measured (``benchmarks/bench_memory.py``, ``benchmarks/bench_vs_official.py``):

- **arenas** (:func:`limit_malloc_arenas`): at most two, so memory freed by the worker threads is reused instead of
  piling up in per-thread arenas (peak RSS of a 4096² infer run 1.32x the 512² run with glibc's default of 8 arenas
  per core, 1.07x with two, before the blender emitted in small blocks);
- **large blocks** (:func:`keep_large_blocks`): glibc serves every block above its mmap threshold (at most 32 MB,
  however it adapts) with a fresh ``mmap`` and returns it with ``munmap`` on free, so each of the network's large
  activations is page-faulted in again, page by page, on every forward pass — an elementwise ``mul`` on 37 MB took
  12.2 ms, 1.9 ms with the threshold raised; the official preset's forward at 256² on 2 cores: fp32 channels-last
  4.71 → 3.85 s, bf16 channels-last 2.87 → 2.64 s. Raising the mmap threshold (and the trim threshold with it, so
  the top of the heap is not handed back after every pass) makes freed blocks reusable.

:func:`tune_allocator` applies both. The command line calls it at start-up, before threads exist, and so do the
processes the package starts to serve or scale out (Triton's model instances, Ray actors); a library must not change
this behind an application's back, so importing the package leaves it alone: call :func:`tune_allocator` from an
application that wants it, or set the equivalent environment (``MALLOC_ARENA_MAX=2``, ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``, or ``GLIBC_TUNABLES``). A setting the environment already makes wins. Without glibc
(musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

__all__ = ["DEFAULT_ARENAS", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_large_blocks", "limit_malloc_arenas",
           "tune_allocator"]

DEFAULT_ARENAS = 2
#: blocks up to this size come from the heap and are reused (glibc's own threshold stops adapting at 32 MB)
MMAP_THRESHOLD = 512 << 20
#: free memory at the top of the heap kept for the next pass rather than returned to the system
TRIM_THRESHOLD = 1 << 30
# mallopt parameter numbers in glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def _mallopt() -> Any:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def _tunable_set(name: str) -> bool:
    """``glibc.malloc.<name>`` is set in ``GLIBC_TUNABLES``."""
    return f"glibc.malloc.{name}=" in os.environ.get("GLIBC_TUNABLES", "")


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's arena count at ``arenas`` unless ``MALLOC_ARENA_MAX`` (or the tunable) is set (the user's choice
    wins); returns whether the cap was applied."""
    if "MALLOC_ARENA_MAX" in os.environ or _tunable_set("arena_max"):
        return False
    mallopt = _mallopt()
    return bool(mallopt and mallopt(_M_ARENA_MAX, int(arenas)))


def keep_large_blocks(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Serve blocks up to ``mmap_threshold`` bytes from the heap and keep up to ``trim_threshold`` bytes free at its
    top, unless the environment sets either (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or the
    tunables); returns whether both were applied."""
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) or \
            _tunable_set("mmap_threshold") or _tunable_set("trim_threshold"):
        return False
    mallopt = _mallopt()
    if not mallopt:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                   int(trim_threshold)))


def tune_allocator() -> dict[str, bool]:
    """Both settings (see the module docstring); returns which were applied. Call before threads exist."""
    return {"arenas": limit_malloc_arenas(), "large_blocks": keep_large_blocks()}
