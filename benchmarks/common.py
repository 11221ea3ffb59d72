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


def speed_probe(threads: tuple[int, ...] = (1, 2)) -> dict[int, float]:
    """This VM's speed now: G multiply-adds/s of a fixed dense GEMM (256 x 650 x 2,600, best of 3) per thread
    count. Its spread across a run says how much of a run's spread is the machine's (slow spells, a
    descheduled second vCPU), not the code's."""
    x, w = torch.randn(256, 650), torch.randn(2600, 650)
    before, rates = torch.get_num_threads(), {}
    try:
        for t in threads:
            torch.set_num_threads(t)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                x @ w.t()
                best = min(best, time.perf_counter() - t0)
            rates[t] = 256 * 650 * 2600 / best / 1e9
    finally:
        torch.set_num_threads(before)
    return rates


def probe_line(probes: list[dict[int, float]]) -> str:
    """The probes of a run as one sentence for RESULTS.md."""
    parts = [f"{t} thread{'s' if t > 1 else ''} {min(p[t] for p in probes):.1f}-{max(p[t] for p in probes):.1f}"
             for t in probes[0]]
    return (f"VM speed probe (`common.speed_probe`, dense GEMM, G multiply-adds/s, {len(probes)} probes): "
            f"{', '.join(parts)}.")


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
