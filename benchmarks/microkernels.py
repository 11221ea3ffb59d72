"""The kernels' inner loops in isolation (``benchmarks/microkernels/*.cpp``), for the per-core rates and
ceilings that the inference numbers are read against: the core's FMA ceiling (registers only, no loads: what
"per cycle" is measured against; a VM's nominal clock can be off), the batch-1 SELL-8 product (entries per cycle; with the
AVX-512 block-permute loop on CPUs that have it), the sparse x dense panel product (multiply-adds per cycle)
and a batch recurrence's products (W_hh times h of 32 columns), each against variants that were tried (in
AVX-512 builds, 16-lane versions of the same loops); and, for the dense side of the comparison, PyTorch's BLAS
on the decoder's dense GEMM (2,048 x 650 x 10,000) on one thread.

Compiles each file with the extension's flags (``-O3 -mavx2 -mfma -ffp-contract=off``) into a temporary
directory and runs it at the given densities on one thread. ``--isa`` adds builds of the same loops for
AVX-512 (``x86-64-v4``; with ``-mprefer-vector-width`` 256 or 512), run one after another in the same
call, to answer whether an AVX-512 build of the kernels would pay. Needs a C++ compiler and an
AVX2 CPU (AVX-512 for those builds). Not a test; stop background jobs first. Example::

    python benchmarks/microkernels.py --densities 0.33 0.1 [--isa avx2 avx512-256 avx512-512]
"""

from __future__ import annotations

import argparse
import shutil
import time
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "microkernels"
FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off"]
ISAS = {  # gcc 12 knows no -march=znver4: x86-64-v4 is AVX-512 F/BW/CD/DQ/VL
    "avx2": ["-mavx2", "-mfma"],
    "avx512-256": ["-march=x86-64-v4", "-mprefer-vector-width=256"],
    "avx512-512": ["-march=x86-64-v4", "-mprefer-vector-width=512"],
}


def clock_ghz() -> float:
    """The CPU's nominal clock from /proc/cpuinfo (cycles are counted at it), or 2.445 GHz."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1e3
    except OSError:
        pass
    return 2.445


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.33, 0.1])
    ap.add_argument("--only", choices=[p.stem for p in sorted(HERE.glob("*.cpp"))], help="one of the loops")
    ap.add_argument("--isa", nargs="+", choices=list(ISAS), default=["avx2"],
                    help="instruction sets to build the loops for (avx2: the extension's)")
    args = ap.parse_args()
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        sys.exit("microkernels.py: no C++ compiler (g++ or c++) on PATH")
    ghz = clock_ghz()
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted(HERE.glob("*.cpp")):
            if args.only and src.stem != args.only:
                continue
            for isa in args.isa:
                exe = Path(tmp) / f"{src.stem}-{isa}"
                subprocess.run([cxx, *FLAGS, *ISAS[isa], "-o", str(exe), str(src)], check=True)
                print(f"== {src.name}, {isa} ({' '.join(ISAS[isa])})")
                for d in args.densities[:1] if src.stem == "fma_peak" else args.densities:
                    subprocess.run([str(exe), str(d), f"{ghz:.3f}"], check=True)
    if not args.only:
        print(f"== dense GEMM (PyTorch), multiply-adds per cycle at {ghz:.3f} GHz, 1 thread: {gemm_rate() / ghz:.2f}")


def gemm_rate(m: int = 2048, k: int = 650, n: int = 10000) -> float:
    """G multiply-adds per second of x @ W.t() on one thread, best of 5."""
    import torch

    torch.set_num_threads(1)
    x, w = torch.randn(m, k), torch.randn(n, k)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x @ w.t()
        best = min(best, time.perf_counter() - t0)
    return m * k * n / best / 1e9


if __name__ == "__main__":
    main()
