"""Where a stacked model's scoring time goes: each stage of the sparse engine's scoring path timed alone, at
``inference.py``'s two scoring shapes (one 2,000-token text; 32 texts x 64 tokens), beside the whole call.

Stages, in the order ``SparseLM.score_ids`` runs them: the first layer's input-table lookup, then per layer
the input product (layers after the first; every time step at once) and the recurrence (T steps in one
kernel call), then the head (decoder product and log-softmax, the targets' log-probabilities); then the
trunk as one call and ``score_ids`` end to end (the difference from the sum of the stages is what a call
does besides them: the Python, copies between stages, fresh pages for buffers larger than one stage's). Each stage's inputs are made once, from a real forward pass, so the
recurrences see real activations. Prints the best and the median of ``--repeats`` calls per stage, and each
stage's share of the sum of the best times. Stacked LSTM/GRU/RNN exports only. Not a test; stop background
jobs first. Example::

    python benchmarks/scoring_parts.py /tmp/selfish-inference-bench/reference-0.1 --threads 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from selfish_deploy.runtime import SparseLM
from selfish_deploy.runtime.stacked import StackedTrunk

from common import machine, probe_line, speed_probe

SHAPES = ((2000, 1), (64, 32))  # (T, B): inference.py's cases (b) and (c)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best and median ms of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return min(samples), statistics.median(samples)


def stages(lm: SparseLM, T: int, B: int, seed: int = 0) -> dict[str, callable]:
    """name -> a call of that stage alone, on inputs made once by running the stages before it."""
    trunk, kernels, head = lm.backend.trunk, lm.backend.trunk.kernels, lm.backend.head
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, len(lm.vocab), (T, B), generator=g)
    ids = tokens.reshape(-1).contiguous()
    out: dict[str, callable] = {}
    x = None
    for k, (w_ih, proj_bias, w_hh, cell_bias) in enumerate(trunk.layers):
        H = w_hh.cols
        rows = k == 0 and trunk.table is not None
        if rows:
            out["input table (layer 0)"] = lambda: trunk.table.index_select(0, ids)
            gates = trunk.table.index_select(0, ids)
        else:
            if x is None:  # no input table: the embedding lookup first
                out["embedding"] = lambda: kernels.embed(trunk.encoder, ids)
                x = kernels.embed(trunk.encoder, ids)
            out[f"input product (layer {k})"] = lambda w=w_ih, b=proj_bias, x=x: kernels.spmm(w, x, b)
            gates = kernels.spmm(w_ih, x, proj_bias)
        c0 = torch.zeros(H, B) if trunk.cell == "lstm" else None

        def recurrence(w=w_hh, b=cell_bias, gates=gates, rows=rows, H=H, c0=c0):
            return kernels.recurrent(trunk.cell, w, b, gates, T, B, torch.zeros(H, B),
                                     None if c0 is None else c0.clone(), g_rows=rows)

        out[f"recurrence (layer {k})"] = recurrence
        x = recurrence()[0]
    targets = torch.randint(0, len(lm.vocab), (T * B,), generator=g)
    out["head (decoder, log-softmax)"] = lambda: head(x, targets)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, help="an export directory of a stacked model")
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    lm = SparseLM.load(args.export, threads=max(args.threads))
    if not isinstance(lm.backend.trunk, StackedTrunk):
        raise SystemExit(f"scoring_parts.py: {args.export} is not a stacked LSTM/GRU/RNN export")
    print(f"{args.export}, {machine()}")
    probes = [speed_probe()]
    g = torch.Generator().manual_seed(1)
    for threads in args.threads:
        lm.backend.trunk.kernels.threads = threads
        torch.set_num_threads(threads)
        for T, B in SHAPES:
            rows = {name: timed(fn, args.repeats) for name, fn in stages(lm, T, B).items()}
            total = sum(best for best, _ in rows.values())
            seqs = [torch.randint(0, len(lm.vocab), (T + 1,), generator=g).tolist() for _ in range(B)]
            rows["trunk, one call"] = timed(lambda: lm.backend.trunk(torch.tensor(seqs).t()[:T].contiguous(),
                                                                     lm.init_state(B)), args.repeats)
            rows["score_ids, end to end"] = timed(lambda: lm.score_ids(seqs), args.repeats)
            print(f"\n{B} x {T} tokens, {threads} thread(s): ms best / median (share of the stages' sum)")
            for name, (best, med) in rows.items():
                share = f"{best / total:6.1%}" if not name.startswith(("trunk", "score_ids")) else ""
                print(f"  {name:32s} {best:8.1f} / {med:8.1f}  {share}")
            print(f"  {'sum of the stages':32s} {total:8.1f}")
        probes.append(speed_probe())
    print(f"\n{probe_line(probes)}")


if __name__ == "__main__":
    main()
