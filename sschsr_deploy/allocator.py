"""glibc's heap arenas: limit how many the process creates, so memory freed by the worker threads is reused instead of
piling up in per-thread arenas (measured with benchmarks/bench_memory.py, before the blender emitted in small blocks:
peak RSS of a 4096² infer run 1.32x the 512² run with glibc's default of 8 arenas per core, 1.07x with two).

Called by the CLI at start-up, before threads exist; a library must not change this behind an application's back,
so the Python API leaves it alone (set ``MALLOC_ARENA_MAX=2`` in the environment to get the same). Without glibc
(musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["DEFAULT_ARENAS", "limit_malloc_arenas"]

DEFAULT_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's arena count at ``arenas`` unless ``MALLOC_ARENA_MAX`` is set (the user's choice wins); returns
    whether the cap was applied."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, int(arenas)))
