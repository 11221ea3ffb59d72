"""The mixture-of-softmaxes head's two mixtures side by side: one training step (forward and backward) of
wt2-awd-lstm-mos-cpu's head (batch 20 x 70 tokens, 3 experts, vocabulary 33,278) with ``mixture = "floor"``
(zihangdai/mos's: the experts' probabilities summed, then ``log(p + 1e-8)``; the default) and ``"exact"``
(ours: a log-sum-exp in log space), each in fresh processes under ``selfish-train``'s allocator policy
(``mos_allocator.py``'s "kept, no tcache"), the two alternated. Prints each one's median and range over
``--runs`` processes, peak RSS, and the ratio. Not a test; stop background jobs first.

    python benchmarks/mos_mixture.py [--threads 1] [--steps 3] [--runs 3]
"""
from __future__ import annotations

import argparse
import statistics

from mos_allocator import run

MIXTURES = ("floor", "exact")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per mixture")
    args = parser.parse_args()
    results = {m: [] for m in MIXTURES}
    for _ in range(args.runs):
        for m in MIXTURES:
            results[m].append(run("kept, no tcache", args.threads, args.steps, m))
    print(f"{args.threads} thread(s), {args.runs} processes per mixture, {args.steps} steps each: median (range)")
    med = {}
    for m, rs in results.items():
        s = [r["s"] for r in rs]
        med[m] = statistics.median(s)
        print(f"  {m:6s} {med[m]:.2f} s/step ({min(s):.2f}-{max(s):.2f})  "
              f"peak RSS {max(r['peak_mib'] for r in rs):,.0f} MiB")
    print(f"floor vs exact: {med['exact'] / med['floor']:.2f}x faster (medians)")


if __name__ == "__main__":
    main()
