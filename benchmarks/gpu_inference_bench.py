"""GPU check, part 3: the runtime on a device, sparse CSR (cuSPARSE on CUDA) against cuDNN's dense nn.LSTM.

    python benchmarks/gpu_inference_bench.py --device cuda --work TMP --out-json OUT.json [--quick]

Model: export_size.py's reference model (2-layer LSTM, hidden and embedding 650, vocabulary 10,000, untied,
random weights and masks) at each ``--densities`` (default 0.33 and 0.1), exported in fp32. Cases: (a) one
generation step at batch 1 with the state carried, (b) scoring 32 sequences of 64 tokens, (c) scoring 256
sequences of 64 tokens. Engines, all in this one process on the device: ``sparse`` (SparseLM, sparse
backend), ``dense`` (SparseLM, dense backend: nn.LSTM, cuDNN on CUDA, and a dense decoder) and ``raw``
(the dense backend's module called directly on the whole batch: nn.LSTM, decoder, log-softmax and gather;
what a hand-written PyTorch scorer costs, without the engine's bookkeeping). Median milliseconds, each call
synchronised with the device; the memory each engine holds on the device after loading.
The sparse backend's scores are checked against the dense backend's first.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from gpu_common import Budget, device_ms, environment, reference_export, rel_err, setup_logging, write_json

log = logging.getLogger("benchmarks.gpu_inference_bench")
CASES = {"a": "generation step, batch 1", "b": "score 32 x 64 tokens", "c": "score 256 x 64 tokens"}
SEQ_LEN = 64


def held_mib(device: torch.device, before: int) -> float | None:
    return (torch.cuda.memory_allocated(device) - before) / 2**20 if device.type == "cuda" else None


def engine_cases(lm, device: torch.device, batches: dict[str, list[list[int]]]) -> dict:
    """The three cases for a SparseLM (either backend): callables."""
    tok = torch.tensor([[5]])
    state = [lm.init_state(1)]

    def step():
        _, state[0] = lm.forward(tok, state[0])

    return {"a": step, "b": lambda: lm.score_ids(batches["b"]), "c": lambda: lm.score_ids(batches["c"])}


def raw_cases(model, device: torch.device, batches: dict[str, list[list[int]]]) -> dict:
    """The same cases on the RNNLM module directly (dense, whole batch in one call)."""
    tok = torch.tensor([[5]], device=device)
    hidden = [model.init_hidden(1)]
    ids = {k: torch.tensor(v, device=device).t().contiguous() for k, v in batches.items()}  # (T+1, B)

    @torch.inference_mode()
    def step():
        logits, hidden[0] = model(tok, hidden[0])
        return torch.log_softmax(logits, -1)

    @torch.inference_mode()
    def score(x):
        logits, _ = model(x[:-1], model.init_hidden(x.shape[1]))
        return torch.log_softmax(logits, -1).gather(2, x[1:].unsqueeze(-1))

    return {"a": step, "b": lambda: score(ids["b"]), "c": lambda: score(ids["c"])}


def bench_model(path: Path, device: torch.device, repeats: dict[str, int], budget: Budget) -> dict:
    from selfish_deploy.runtime import SparseLM

    row = {"model": str(path.name), "times_ms": {}, "held_mib": {}, "skipped": []}
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    sparse = SparseLM.load(path, backend="sparse", device=device)
    row["held_mib"]["sparse"] = held_mib(device, before)
    V = len(sparse.vocab)
    row["density"] = float(sparse.exported.config.get("density", 1.0))
    row["kernels"] = sparse.backend.kernels_name
    row["arch"] = f"{sparse.config.layers}x{sparse.config.hidden} {sparse.config.arch}, vocab {V}"
    gen = torch.Generator().manual_seed(0)
    batches = {k: torch.randint(0, V, (n, SEQ_LEN + 1), generator=gen).tolist() for k, n in (("b", 32), ("c", 256))}
    mid = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    dense = SparseLM.load(path, backend="dense", device=device)
    row["held_mib"]["dense"] = held_mib(device, mid)
    a = torch.tensor([x for s in sparse.score_ids(batches["b"]) for x in s.logprobs])
    b = torch.tensor([x for s in dense.score_ids(batches["b"]) for x in s.logprobs])
    row["sparse_vs_dense_rel_err"] = rel_err(a, b)
    engines = {"sparse": engine_cases(sparse, device, batches), "dense": engine_cases(dense, device, batches),
               "raw": raw_cases(dense.backend.model, device, batches)}
    for case in CASES:
        for engine, cases in engines.items():
            if budget.left() <= 0:
                row["skipped"].append(f"{engine} {case}")
                continue
            row["times_ms"].setdefault(case, {})[engine] = device_ms(cases[case], device, repeats[case])
        log.info("%s case %s: %s", path.name, case, row["times_ms"].get(case))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--work", type=Path, required=True, help="scratch directory (the reference exports)")
    p.add_argument("--out-json", type=Path, required=True, help="where the results go")
    p.add_argument("--densities", type=float, nargs="+", default=[0.33, 0.1], help="reference model densities")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per scoring case (the step: 10x as many)")
    p.add_argument("--quick", action="store_true", help="a 2x32 reference model and 2 repeats (the CPU dry run)")
    p.add_argument("--budget-s", type=float, default=150.0, help="skip the cases left after this many seconds")
    args = p.parse_args(argv)
    setup_logging()
    if args.quick:  # tiny models: one thread is as fast, and no OpenMP spinning on a busy machine
        torch.set_num_threads(1)
    device = torch.device(args.device)
    reps = 2 if args.quick else args.repeats
    repeats = {"a": 10 * reps, "b": reps, "c": reps}
    budget = Budget(args.budget_s)
    result = {"env": environment(device), "quick": args.quick, "cases": CASES, "repeats": repeats, "rows": [],
              "errors": {}}
    for d in args.densities:
        if budget.left() <= 0:
            result["errors"][str(d)] = "skipped: out of time"
            continue
        try:
            result["rows"].append(bench_model(reference_export(args.work, d, args.quick), device, repeats, budget))
        except Exception as e:  # noqa: BLE001 - the other density still runs
            log.exception("density %s failed", d)
            result["errors"][str(d)] = f"{type(e).__name__}: {e}"
        write_json(args.out_json, result)
    write_json(args.out_json, result)
    return 0 if result["rows"] and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
