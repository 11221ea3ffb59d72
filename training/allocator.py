"""Keep freed memory in the process on CPU, so that a batch's large buffers are not faulted in again each step.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
free, so each training step of a large-vocabulary model re-faults its activations page by page: on the
``wt2-awd-lstm-mos-cpu`` recipe (about 560 MB of expert log-probabilities per batch) a mixture-of-softmaxes
forward and backward took 1.29M page faults and 7.3 s, a third of it in the kernel; from the heap it took 0.23M
and 5.1 s (``benchmarks/RESULTS.md``). It takes in some processes only (13 of 24 probes; why is not known yet,
address randomization is not it), never making things worse. Same numbers, only the allocator's policy changes. Skipped where the user
already chose (a ``MALLOC_*`` variable, another allocator preloaded) and outside glibc.

The runtime's ``selfish_deploy.runtime.heap.keep_freed`` is the serving side's milder policy (blocks up to glibc's
32 MiB mmap ceiling, set after load). This one is separate because it must run before torch is imported, which
importing ``selfish_deploy.runtime`` does: set after the import, a freed 64 MiB buffer was still faulted in again
at 2 threads (``tests/test_allocator.py``)."""
from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
USER_CHOICES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and never trim it; True when the policy was applied."""
    chosen = [v for v in USER_CHOICES if os.environ.get(v)]
    if chosen or platform.libc_ver()[0] != "glibc":
        log.debug("allocator left as is (%s)", ", ".join(chosen) or "not glibc")
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    log.debug("allocator: large buffers reused from the heap (mallopt), so steps do not fault them in again")
    return applied
