"""Fresh pages per scoring call: the sparse engine with glibc's default heap behaviour against the engine's
own (``runtime/heap.py``: freed blocks of up to 32 MB stay in the heap for the next call), and that with
glibc's per-thread cache off as well (``GLIBC_TUNABLES``, as ``selfish-train`` runs: ``training/allocator.py``),
side by side.

Each configuration runs in its own process (malloc settings are process-wide), in interleaved rounds, on
``inference.py``'s two scoring shapes (one 2,000-token text; 32 texts x 64 tokens): minor page faults per
``score_ids`` call (a count, not a timing: the same on any run) and the call's median and best ms. Not a
test; stop background jobs first. Example::

    python benchmarks/page_faults.py /tmp/selfish-inference-bench/reference-0.1 [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = ((2000, 1), (64, 32))
MODES = ("glibc default", "engine keeps freed memory", "the same, no thread cache")


def measure(export: str, mode: str, threads: int, calls: int) -> dict:
    import torch

    from selfish_deploy.runtime import SparseLM, heap

    if mode == MODES[0]:
        heap.keep_freed = lambda: False  # the baseline: glibc as it comes
    lm = SparseLM.load(export, threads=threads)
    g = torch.Generator().manual_seed(1)
    out = {}
    for T, B in SHAPES:
        seqs = [torch.randint(0, len(lm.vocab), (T + 1,), generator=g).tolist() for _ in range(B)]
        lm.score_ids(seqs)  # warm-up
        faults, ms = [], []
        for _ in range(calls):
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            lm.score_ids(seqs)
            ms.append((time.perf_counter() - t0) * 1e3)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        out[f"{B} x {T}"] = {"faults": statistics.median(faults), "ms": ms}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path)
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per configuration, interleaved")
    ap.add_argument("--calls", type=int, default=5, help="score_ids calls per shape and process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(str(args.export), args.child, args.threads, args.calls)))
        return
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            cmd = [sys.executable, __file__, str(args.export), "--child", mode, "--threads", str(args.threads),
                   "--calls", str(args.calls)]
            env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
            if mode == MODES[2]:
                from selfish_deploy.training.allocator import TUNABLES

                env["GLIBC_TUNABLES"] = TUNABLES
            runs[mode].append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                                        env=env).stdout))
    print(f"{args.export}, {args.threads} thread(s), {args.rounds} rounds x {args.calls} calls per shape")
    print(f"{'shape':10s} {'heap':28s} {'faults/call':>12s} {'median ms':>10s} {'best ms':>9s}")
    for shape in runs[MODES[0]][0]:
        med = {}
        for mode in MODES:
            ms = [x for r in runs[mode] for x in r[shape]["ms"]]
            faults = statistics.median(r[shape]["faults"] for r in runs[mode])
            med[mode] = statistics.median(ms)
            print(f"{shape:10s} {mode:28s} {faults:12.0f} {med[mode]:10.1f} {min(ms):9.1f}")
        for mode in MODES[1:]:
            print(f"{shape:10s} {'default / ' + mode[:18]:28s} {'':12s} {med[MODES[0]] / med[mode]:9.2f}x")


if __name__ == "__main__":
    main()
