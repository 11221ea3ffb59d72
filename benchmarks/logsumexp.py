"""The dense decoder's log-sum-exp: ``torch.logsumexp`` against the kernels' ``logsumexp_rows`` (what a
density-1.0 export's head runs after PyTorch's GEMM), on the reference model's logits of 2,048 positions x
10,000 words, side by side in one process, alternating. Prints the best and median ms of each, the ratio and
the largest relative difference. Not a test; stop background jobs first. Example::

    python benchmarks/logsumexp.py [--threads 2] [--rows 2048] [--vocab 10000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from selfish_deploy.kernels import kernels_for

from common import machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernels = kernels_for("cpu", args.threads)
    if not hasattr(kernels, "logsumexp_rows"):
        raise SystemExit("logsumexp.py: the compiled kernels are not built")
    logits = torch.randn(args.rows, args.vocab, generator=torch.Generator().manual_seed(0)) * 4
    ways = {"torch.logsumexp": lambda: torch.logsumexp(logits, dim=-1),
            "kernels": lambda: kernels.logsumexp_rows(logits)}
    times = {name: [] for name in ways}
    for r in range(args.rounds):
        for name in (ways if r % 2 == 0 else reversed(list(ways))):
            t0 = time.perf_counter()
            ways[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    ref, got = ways["torch.logsumexp"](), ways["kernels"]()
    print(f"{machine()}; {args.rows} x {args.vocab} logits, {args.threads} thread(s), {args.rounds} alternating rounds")
    for name, ts in times.items():
        print(f"  {name:16s} best {min(ts):7.2f} ms, median {statistics.median(ts):7.2f} ms")
    print(f"  torch / kernels: {min(times['torch.logsumexp']) / min(times['kernels']):.2f}x (best of each); largest "
          f"relative difference {((got - ref).abs() / ref.abs()).max().item():.1e}")


if __name__ == "__main__":
    main()
