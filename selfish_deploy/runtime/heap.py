"""The process heap (glibc malloc) around an engine: what loading frees goes back to the OS, and what a call
frees stays for the next call.

glibc's defaults do the opposite of what an engine wants between calls. A scoring call allocates tens of MB
of activations (the reference 2x650 model: 21 MB of gate inputs per layer for 2,048 tokens) and frees them on
return; glibc hands such memory back to the OS (``munmap``, or trimming the heap's top), so the next call
faults every page in again: 8-13 thousand minor faults per call of ``benchmarks/inference.py``'s scoring
cases (``benchmarks/page_faults.py``). Keeping freed memory costs resident memory up to the largest call's
working set, the same trade as PyTorch's caching allocator on the GPU. Other C libraries: nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20  # the most glibc accepts on 64-bit: blocks up to it come from the reusable heap
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept before glibc trims it


@functools.cache
def _libc():
    """glibc, or None (another C library: no mallopt)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def return_freed() -> None:
    """Hand the heap that loading freed back to the OS (glibc keeps it otherwise: ~2x the model in RSS)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_freed() -> bool:
    """Let freed blocks of up to 32 MB stay in the heap for reuse instead of going back to the OS at once.
    Leaves glibc alone where the user tuned it (``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_``).
    Returns whether the settings were made."""
    libc = _libc()
    if libc is None or any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
