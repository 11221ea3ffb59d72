"""Keep freed memory in the process on CPU, so that a batch's large buffers are not faulted in again each step.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
free, so each training step of a large-vocabulary model re-faults its activations page by page: on the
``wt2-awd-lstm-mos-cpu`` recipe's mixture-of-softmaxes head a step faulted 1.29M pages in (``benchmarks/
RESULTS.md``). The policy has two halves:

- ``keep_freed_memory`` (in the process, before torch is imported): large buffers from the heap
  (``M_MMAP_MAX`` 0), and the heap never trimmed (``M_TRIM_THRESHOLD`` -1; the largest positive value, 2 GiB,
  was not enough: the MoS step's heap peaks at 3.9 GB, so every step trimmed it and faulted it in again).
- ``restart_without_thread_cache`` (``selfish-train`` only, at its start): glibc's per-thread cache off
  (``GLIBC_TUNABLES``, which glibc reads at a process's start, hence one ``execve`` of the same command). PyTorch
  allocates with ``posix_memalign``, whose small trimmed-off pieces the cache keeps as if in use, so a freed
  buffer cannot merge with its neighbours and the next buffer of the same size does not fit in the hole: a
  reused 64 MiB buffer was faulted in again in 11 of 24 processes, and the MoS step's heap grew to 6-7 GB.
  Without the cache: reused in every process, the heap at the step's peak.

The cost is memory: the process keeps its peak (as PyTorch's caching allocator does on a GPU). Same numbers,
only the allocator's policy changes. Left alone where the user already chose (``MALLOC_*``, ``GLIBC_TUNABLES``
or ``LD_PRELOAD`` set, even empty) and outside glibc.

The runtime's ``selfish_deploy.runtime.heap.keep_freed`` is the serving side's milder policy (blocks up to glibc's
32 MiB mmap ceiling, set after load). This one is separate because it must run before torch is imported, which
importing ``selfish_deploy.runtime`` does: set after the import, a freed 64 MiB buffer was still faulted in again
at 2 threads (``tests/test_allocator.py``)."""
from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
TUNABLES = "glibc.malloc.tcache_count=0"  # what restart_without_thread_cache sets
USER_CHOICES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")

_applied = False


def users_choice() -> str | None:
    """Why the allocator is left as it is (the user's own setting, or not glibc), or None."""
    chosen = [v for v in USER_CHOICES if v in os.environ
              and not (v == "GLIBC_TUNABLES" and os.environ[v] == TUNABLES)]  # ours, after the restart
    if chosen:
        return ", ".join(chosen) + " set"
    if platform.libc_ver()[0] != "glibc":
        return "not glibc"
    return None


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and never trim it; True when the policy was applied."""
    global _applied
    why = users_choice()
    if why:
        log.debug("allocator left as is (%s)", why)
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
    return _applied


def restart_without_thread_cache() -> None:
    """Execute this command again (the same process id, arguments and environment) with glibc's per-thread
    cache off, once; returns without doing anything where the policy does not apply or it already ran."""
    if users_choice() or os.environ.get("GLIBC_TUNABLES") == TUNABLES or not sys.executable:
        return
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": TUNABLES})
    except OSError as e:  # the command goes on with the thread cache on
        log.debug("allocator: could not restart without glibc's thread cache: %s", e)


def describe() -> str:
    """The policy in effect, for the run's log."""
    if not _applied:
        return f"glibc's default ({users_choice() or 'mallopt refused the settings'})"
    cache = "off" if os.environ.get("GLIBC_TUNABLES") == TUNABLES else "on"
    return f"large buffers kept on the heap, never trimmed; glibc's thread cache {cache}"
