"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so importable as ``common``)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

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


def median_ms(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return 1000 * statistics.median(samples)


def replace_section(results: Path, heading: str, text: str) -> None:
    """Put ``text`` (starting with ``heading``, a ``## `` line) in RESULTS.md in place of that section, or at the
    end; other sections stay as they are."""
    old = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    text = text.strip() + "\n"
    start = old.find(heading + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text + ("" if end < 0 else old[end:])
    results.write_text(new, encoding="utf-8")
