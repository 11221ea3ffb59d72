"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so importable as ``common``)."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """One line for RESULTS.md: CPU, cores, torch and Python versions."""
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}"


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return 1000 * statistics.median(samples)
