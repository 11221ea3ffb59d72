"""A/B of the dense batch-1 copy (``kernels.compiled.DENSE_BATCH1``) in one process: the same export loaded
twice, once with batch-1 recurrences on the dense copy and once on SELL-8 only, their calls alternated.

Cases on the sparse backend: the trunk over a 2,000-token text at batch 1 (the recurrences and the second
layer's input product), scoring that text (the decoder too), and a generation step. Prints the best time of
each and SELL's time over the dense copy's (> 1: the copy is faster), and checks that both give the same bits.
Not a test; stop background jobs first. Example::

    python benchmarks/dense_batch1.py /tmp/selfish-inference-bench/reference-0.33
"""

from __future__ import annotations

import argparse
import time

import torch

from selfish_deploy.kernels import compiled
from selfish_deploy.runtime import SparseLM

ON, OFF = compiled.DENSE_BATCH1, 2.0  # OFF: no matrix is that dense, so SELL-8 everywhere


def mean_ms(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", help="an export directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds; the best counts")
    args = ap.parse_args()
    text = torch.randint(0, 100, (2000, 1), generator=torch.Generator().manual_seed(0))
    tok = torch.tensor([[5]])
    engines = {}
    for name, threshold in (("dense copy", ON), ("SELL only", OFF)):
        compiled.DENSE_BATCH1 = threshold  # read when a recurrence first builds its layout: set before each call
        lm = SparseLM.load(args.export, backend="sparse", threads=args.threads)
        engines[name] = (threshold, lm, lm.forward(tok, None)[1])
    times = {name: {"trunk": [], "score": [], "step": []} for name in engines}
    outputs = {}
    for _ in range(args.rounds):
        for name, (threshold, lm, state) in engines.items():
            compiled.DENSE_BATCH1 = threshold
            be, zero = lm.backend, lm.init_state(1)
            times[name]["trunk"].append(mean_ms(lambda: be.trunk(text, zero), 1))
            times[name]["score"].append(mean_ms(lambda: be.score(text, text, zero), 1))
            box = [state]

            def step():
                box[0] = lm.forward(tok, box[0])[1]

            times[name]["step"].append(mean_ms(step, 200))
            outputs[name] = be.trunk(text[:300], zero)[0]
    for case in ("trunk", "score", "step"):
        on, off = (min(times[n][case]) for n in engines)
        print(f"{case:5s}: dense copy {on:8.2f} ms   SELL only {off:8.2f} ms   SELL / dense copy {off / on:.2f}")
    print("same bits:", torch.equal(*outputs.values()))


if __name__ == "__main__":
    main()
