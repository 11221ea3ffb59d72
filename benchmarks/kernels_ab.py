"""A/B of the sparse backend's kernels in one process: the same export loaded twice, as built now ("new") and
as a baseline ("old"), their calls alternated so that both see the same spells of this VM's speed.

The baseline is one of:

- ``--baseline-library PATH``: another build of the kernels library (for example a copy of
  ``selfish_deploy/kernels/_cpu*.so`` taken before a change; the two must share the ABI version);
- ``--baseline dense-batch1-off``: the dense batch-1 copy of recurrent matrices (``kernels.compiled.DENSE_BATCH1``)
  against SELL-8 everywhere, both without the block-permute copy (which, on AVX-512 CPUs, replaces both);
- ``--baseline block-permute-off``: this build with the AVX-512 block-permute copy of batch-1 recurrences
  turned off (``kernels.compiled.BLOCK_PERMUTE``), so SELL-8 there (on CPUs without AVX-512 both are SELL-8);
- ``--baseline blas-batch``: this build as it is ("old": dense recurrences of ``kernels.compiled.BLAS_BATCH``
  sequences or more on PyTorch's BLAS) against "new", every dense recurrence on the package's own kernel (a
  candidate for the switch; a density-1.0 export is where it matters; the outputs then differ by rounding, so
  the bits check reads False).

Cases: one batch-1 product of the last layer's W_hh (stacked trunks: the unit every batch-1 recurrence and step
repeats), the same product times 3 columns (stacked trunks: a small batch's unit), the last layer's recurrence over 64 steps of 32 columns (stacked trunks: the unit of batched
scoring), the trunk over a 2,000-token text at batch 1 (the recurrences and the input products), scoring that
text (the decoder too), scoring 32 texts x 64 tokens as one batch (``inference.py``'s third case), a
generation step, and a generation step of 3 sequences. Prints the best time of each and old / new (> 1: new is
faster), the median and range of the rounds' own old / new ratios, and checks that both give the same bits.
Not a test; stop background jobs first. Example::

    cp selfish_deploy/kernels/_cpu*.so /tmp/old.so   # before the change; rebuild after it
    python benchmarks/kernels_ab.py /tmp/selfish-inference-bench/reference-0.1 --baseline-library /tmp/old.so
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator

import torch

from selfish_deploy import kernels
from selfish_deploy.kernels import compiled, loader
from selfish_deploy.runtime import SparseLM
from selfish_deploy.runtime.stacked import StackedTrunk

from common import probe_line, speed_probe

DENSE_BATCH1, BLAS_BATCH, BLOCK_PERMUTE = compiled.DENSE_BATCH1, compiled.BLAS_BATCH, compiled.BLOCK_PERMUTE
CASES = ("product", "product3", "recurrence", "trunk", "score", "batch", "step", "step3")


def mean_ms(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e3


@contextlib.contextmanager
def library(path: str | None) -> Iterator[None]:
    """Engines loaded inside run on the library at ``path`` (None: the built one)."""
    if path is None:
        yield
        return
    lib = loader.open_library(path)
    own = kernels.kernels_for

    def kernels_for(device="cpu", threads=None):
        k = compiled.CompiledKernels(lib)
        k.threads = threads or torch.get_num_threads()
        return k

    kernels.kernels_for = kernels_for
    try:
        yield
    finally:
        kernels.kernels_for = own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", help="an export directory")
    base = ap.add_mutually_exclusive_group(required=True)
    base.add_argument("--baseline-library", metavar="PATH", help="another build of the kernels library")
    base.add_argument("--baseline", choices=["dense-batch1-off", "block-permute-off", "blas-batch"],
                      help="this build with a feature turned off (blas-batch: the candidate turned on in 'new')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds; the best counts")
    ap.add_argument("--tokens", type=int, default=2000, help="the scored text's length")
    args = ap.parse_args()
    text = torch.randint(0, 100, (args.tokens, 1), generator=torch.Generator().manual_seed(0))
    batch = torch.randint(0, 100, (64, 32), generator=torch.Generator().manual_seed(2))  # (T, B)
    tok, tok3 = torch.tensor([[5]]), torch.tensor([[5, 6, 7]])
    # name -> ((the dense batch-1 threshold, the BLAS batch, block-permute) it runs with, the library it loads from)
    off = 2.0 if args.baseline == "dense-batch1-off" else DENSE_BATCH1  # 2.0: no matrix is that dense
    never = 1 << 30 if args.baseline == "blas-batch" else BLAS_BATCH  # no batch that large
    bp_old = BLOCK_PERMUTE and args.baseline not in ("block-permute-off", "dense-batch1-off")
    bp_new = BLOCK_PERMUTE and args.baseline != "dense-batch1-off"
    variants = {"new": ((DENSE_BATCH1, never, bp_new), None),
                "old": ((off, BLAS_BATCH, bp_old), args.baseline_library)}
    engines = {}

    def use(settings):  # read when a call runs (DENSE_BATCH1: when a recurrence first builds its layout)
        compiled.DENSE_BATCH1, compiled.BLAS_BATCH, compiled.BLOCK_PERMUTE = settings

    for name, (settings, path) in variants.items():
        use(settings)
        with library(path):
            lm = SparseLM.load(args.export, backend="sparse", threads=args.threads)
        engines[name] = (settings, lm, lm.forward(tok, None)[1])
    # the single-matrix cases' inputs (stacked trunks), the same for both engines
    stacked = isinstance(engines["new"][1].backend.trunk, StackedTrunk)
    if stacked:
        _, _, w, _ = engines["new"][1].backend.trunk.layers[-1]
        T, B = batch.shape
        seeded = torch.Generator().manual_seed(1)
        x1, x3 = torch.randn(w.cols, 1, generator=seeded), torch.randn(w.cols, 3, generator=seeded)
        y1, y3 = torch.empty(w.rows, 1), torch.empty(w.rows, 3)  # outputs given: the kernel's time only
        g = torch.randn(w.rows, T * B, generator=seeded)  # the recurrence's input projections
    probes = [speed_probe()]
    times = {name: {case: [] for case in CASES} for name in engines}
    for i in range(args.rounds):
        for name in ("new", "old") if i % 2 == 0 else ("old", "new"):  # ABBA: neither always goes first
            settings, lm, state = engines[name]
            use(settings)
            be, zero = lm.backend, lm.init_state(1)
            if stacked:
                _, _, w_hh, b_hh = be.trunk.layers[-1]
                times[name]["product"].append(mean_ms(lambda: be.kernels.spmm(w_hh, x1, out=y1), 200))
                times[name]["product3"].append(mean_ms(lambda: be.kernels.spmm(w_hh, x3, out=y3), 200))
                h0, c0 = torch.zeros(w_hh.cols, B), torch.zeros(w_hh.cols, B) if be.trunk.cell == "lstm" else None
                times[name]["recurrence"].append(mean_ms(
                    lambda: be.kernels.recurrent(be.trunk.cell, w_hh, b_hh, g, T, B, h0, c0), 1))
            times[name]["trunk"].append(mean_ms(lambda: be.trunk(text, zero), 1))
            times[name]["score"].append(mean_ms(lambda: be.score(text, text, zero), 1))
            zeros = lm.init_state(batch.shape[1])
            times[name]["batch"].append(mean_ms(lambda: be.score(batch, batch, zeros), 1))
            box = [state]

            def step():
                box[0] = lm.forward(tok, box[0])[1]

            times[name]["step"].append(mean_ms(step, 200))
            box3 = [lm.forward(tok3, lm.init_state(3))[1]]

            def step3():
                box3[0] = lm.forward(tok3, box3[0])[1]

            times[name]["step3"].append(mean_ms(step3, 100))
    outputs = {}
    for name, (settings, lm, state) in engines.items():  # the same bits? once each, after the timing
        use(settings)
        zero = lm.init_state(1)
        outputs[name] = (lm.backend.trunk(text[:300], zero)[0], lm.forward(text[:300], zero)[0],
                         lm.forward(batch, lm.init_state(batch.shape[1]))[0], lm.forward(tok, state)[0],
                         lm.forward(tok3, lm.init_state(3))[0])
    for case in CASES:
        if not times["new"][case]:
            continue
        new, old = (min(times[n][case]) for n in ("new", "old"))
        # each round's pair ran back to back: their ratio cancels the VM's slower drifts, which min() does not
        pairs = sorted(o / n for o, n in zip(times["old"][case], times["new"][case]))
        print(f"{case:7s}: new {new:8.3f} ms   old {old:8.3f} ms   old / new {old / new:.2f} (best of each); "
              f"per round {statistics.median(pairs):.2f} median, {pairs[0]:.2f}-{pairs[-1]:.2f}")
    probes.append(speed_probe())
    print(probe_line(probes))
    same = all(torch.equal(a, b) for a, b in zip(*outputs.values()))
    print("same bits (trunk, log-probabilities of a text, of a batch, of a step and of a 3-sequence step):", same)


if __name__ == "__main__":
    main()
