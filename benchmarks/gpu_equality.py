"""GPU check, part 1b: the same numbers on the CPU and on ``--device`` (issue 16).

    python benchmarks/gpu_equality.py --device cuda --data-dir DIR --work TMP --out-json OUT.json [--quick]

(a) One training step through the real trainer (``train()``: selfish masks, SNT-ASGD averaging from the first
step, dense-gradient clipping) on ptb-tiny, dropout 0 so nothing random differs, once on the CPU and once on
the device: weights, masks, averages and losses compared. On CUDA it runs twice: with PyTorch's defaults
(cuDNN may use TF32 for the LSTM) and with ``torch.backends.cudnn.allow_tf32 = False``.
(b) The runtime's log-probabilities for export_size.py's reference model (density 0.33): the CPU sparse
backend against the device's sparse (cuSPARSE) and dense (cuDNN) backends, on ``forward``, ``score_ids``
and 20 greedy tokens.

With ``--device cpu`` (the dry run) the device side is the CPU too: the path is checked, not CUDA.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from gpu_common import Budget, environment, reference_export, rel_err, setup_logging, write_json

log = logging.getLogger("benchmarks.gpu_equality")
TRAIN_TOL = 1e-4  # relative, weights after one step: float rounding of two libraries, no TF32
RUNTIME_TOL = 1e-5  # relative, as tests/test_runtime.py


def flat_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested dict/list, keyed by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else []
    out = {}
    for k, v in items:
        out.update(flat_tensors(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def one_step(device: str, data_dir: str, out: Path, quick: bool) -> dict:
    """One trainer step into ``out``; returns its checkpoint's tensors and the epoch record."""
    from selfish_deploy.training.checkpoint import load_checkpoint
    from selfish_deploy.training.config import TrainConfig
    from selfish_deploy.training.trainer import train

    width = 24 if quick else 200
    cfg = TrainConfig(corpus="ptb-tiny", data_dir=data_dir, arch="lstm", layers=2, hidden=width, emb=width,
                      dropout=0.0, tie_weights=True, method="selfish", density=0.33, optimizer="snt-asgd",
                      asgd_after=0, epochs=1, max_batches=1, batch_size=20, bptt=35, seed=1111,
                      device=device, out=str(out), log_interval=10**9)
    train(cfg, overwrite=True)
    ckpt = load_checkpoint(out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if r["event"] == "epoch")
    return {"weights": ckpt["weights"], "masks": ckpt["masks"], "optimizer": flat_tensors(ckpt["optimizer"]),
            "train_loss": epoch["train_loss"], "val_loss": epoch["val_loss"]}


def compare_steps(ref: dict, got: dict) -> dict:
    w = max(rel_err(got["weights"][n], ref["weights"][n]) for n in ref["weights"])
    opt = max((rel_err(got["optimizer"][n], ref["optimizer"][n]) for n in ref["optimizer"]), default=0.0)
    return {"weights_rel_err": w, "optimizer_state_rel_err": opt,
            "masks_equal": all(torch.equal(got["masks"][n], ref["masks"][n]) for n in ref["masks"]),
            "same_optimizer_tensors": sorted(got["optimizer"]) == sorted(ref["optimizer"]),
            "train_loss_diff": abs(got["train_loss"] - ref["train_loss"]),
            "val_loss_diff": abs(got["val_loss"] - ref["val_loss"])}


def training_step(device: torch.device, data_dir: str, work: Path, quick: bool) -> list[dict]:
    ref = one_step("cpu", data_dir, work / "step-cpu", quick)
    rows = []
    settings = [("defaults", None)] + ([("cudnn TF32 off", False)] if device.type == "cuda" else [])
    for label, tf32 in settings:
        saved = torch.backends.cudnn.allow_tf32
        if tf32 is not None:
            torch.backends.cudnn.allow_tf32 = tf32
        try:
            got = one_step(str(device), data_dir, work / f"step-{device.type}-{len(rows)}", quick)
        finally:
            torch.backends.cudnn.allow_tf32 = saved
        row = {"setting": label, **compare_steps(ref, got)}
        # TF32 rounds to 10-bit mantissas: with it on, only a loose bound is meaningful
        row["tolerance"] = TRAIN_TOL if (device.type == "cpu" or tf32 is False) else 1e-2
        row["ok"] = bool(row["masks_equal"] and row["same_optimizer_tensors"]
                         and row["weights_rel_err"] <= row["tolerance"]
                         and row["optimizer_state_rel_err"] <= row["tolerance"])
        rows.append(row)
        log.info("training step, %s: %s", label, row)
    return rows


def runtime_logprobs(device: torch.device, work: Path, quick: bool) -> list[dict]:
    from selfish_deploy.runtime import SparseLM

    path = reference_export(work, 0.33, quick)
    cpu = SparseLM.load(path, backend="sparse", device="cpu")
    V = len(cpu.vocab)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (20, 4), generator=gen)
    seqs = [torch.randint(0, V, (n,), generator=gen).tolist() for n in (31, 17, 64, 2, 40, 9, 25, 50)]
    want_fwd = cpu.forward(tokens)[0]
    want_scores = torch.tensor([x for s in cpu.score_ids(seqs) for x in s.logprobs])
    want_greedy = cpu.generate([0, 3], max_tokens=20, temperature=0).token_ids
    rows = []
    for backend in ("sparse", "dense"):
        settings = [("defaults", None)] + ([("cudnn TF32 off", False)]
                                           if device.type == "cuda" and backend == "dense" else [])
        for label, tf32 in settings:
            saved = torch.backends.cudnn.allow_tf32
            if tf32 is not None:
                torch.backends.cudnn.allow_tf32 = tf32
            try:
                lm = SparseLM.load(path, backend=backend, device=device)
                fwd = rel_err(lm.forward(tokens)[0], want_fwd)
                scores = torch.tensor([x for s in lm.score_ids(seqs) for x in s.logprobs])
                greedy = lm.generate([0, 3], max_tokens=20, temperature=0).token_ids
            finally:
                torch.backends.cudnn.allow_tf32 = saved
            strict = backend == "sparse" or device.type == "cpu" or tf32 is False
            row = {"backend": f"{backend} on {device}", "setting": label, "kernels": lm.backend.kernels_name,
                   "forward_rel_err": fwd, "score_rel_err": rel_err(scores, want_scores),
                   "greedy_equal": greedy == want_greedy, "tolerance": RUNTIME_TOL if strict else 1e-2}
            row["ok"] = bool(row["greedy_equal"] and fwd <= row["tolerance"]
                             and row["score_rel_err"] <= row["tolerance"])
            rows.append(row)
            log.info("runtime log-probabilities, %s: %s", backend, row)
            del lm
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="the device compared with the CPU")
    p.add_argument("--data-dir", required=True, help="corpus directory holding ptb-tiny/")
    p.add_argument("--work", type=Path, required=True, help="scratch directory (run directories, exports)")
    p.add_argument("--out-json", type=Path, required=True, help="where the results go")
    p.add_argument("--quick", action="store_true", help="tiny models (the CPU dry run)")
    p.add_argument("--budget-s", type=float, default=300.0, help="skip what is left after this many seconds")
    args = p.parse_args(argv)
    setup_logging()
    if args.quick:  # tiny models: one thread is as fast, and no OpenMP spinning on a busy machine
        torch.set_num_threads(1)
    device = torch.device(args.device)
    budget = Budget(args.budget_s)
    result = {"env": environment(device), "quick": args.quick, "errors": {}}
    for name, fn in (("training_step", lambda: training_step(device, args.data_dir, args.work, args.quick)),
                     ("runtime_logprobs", lambda: runtime_logprobs(device, args.work, args.quick))):
        if budget.left() <= 0:
            result["errors"][name] = "skipped: out of time"
            continue
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 - one check failing must not hide the other
            log.exception("%s failed", name)
            result["errors"][name] = f"{type(e).__name__}: {e}"
        write_json(args.out_json, result)
    write_json(args.out_json, result)
    checks = result.get("training_step", []) + result.get("runtime_logprobs", [])
    ok = not result["errors"] and checks and all(r["ok"] for r in checks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
