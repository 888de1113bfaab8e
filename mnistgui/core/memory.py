"""Handing memory that Python and NumPy have freed back to the operating system.

glibc's malloc keeps freed blocks in per-thread arenas for reuse; every training or loading thread
gets an arena of its own, so after many runs the process holds tens of megabytes it no longer uses
(measured: 61-127 MB over 50 start/stop cycles of the window, of which tracemalloc saw under 1 MB).
`malloc_trim(0)` returns the free pages of every arena. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import sys


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library; glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Return freed heap pages to the OS (ctypes drops the GIL during the call); True if it could."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_reusing = False


def reuse_large_blocks() -> bool:
    """Serve blocks up to 32 MB from malloc's heap and keep freed ones for reuse; True if it could.

    glibc maps a fresh block for each large allocation and unmaps it on free, so every step of a
    convnet page-faults its feature maps in anew: 0.92 million floats a map, written three times
    over by one elementwise Op, took 4.6 ms where the same Op on reused memory takes 0.2 ms. With
    this, an epoch of 6,400 images went from 3.8 to 3.2 s on 2 cores. `release_free_memory` still
    returns free pages when a run ends.
    """
    global _reusing
    if _reusing:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _reusing = bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 * 2**20))
    return _reusing
