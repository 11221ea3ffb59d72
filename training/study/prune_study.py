"""``selfish-study prune``: base classifiers per cell, one-shot pruning per regime and level, masked retraining.

Protocol (thesis ch. 6): train a dense stacked classifier per cell; for each regime and level, start from a copy
of it, prune globally by magnitude, measure test accuracy (epoch 0), then retrain with the mask frozen (fresh
Adam, same learning rate) for ``retrain_epochs`` epochs, measuring after each.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from tqdm import tqdm

from .classifier import Classifier, install_masks, stacked
from .config import PruneConfig
from .loop import StudyData, accuracy, adam, torch_seed, train_epoch
from .prune import prune_

log = logging.getLogger(__name__)


def train_base(cfg: PruneConfig, cell: str, data: StudyData, max_batches: int | None) -> tuple[Classifier, list]:
    torch.manual_seed(torch_seed(cfg.seed, "base", cell))
    model = Classifier(stacked(cell, cfg.emb, cfg.hidden, cfg.layers)).to(data.device)
    masks = install_masks(model)
    optimizer = adam(model, cfg.lr)
    rng = np.random.default_rng(torch_seed(cfg.seed, "base-batches", cell))
    curve = []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        loss = train_epoch(model, masks, optimizer, data.train, cfg.batch_size, cfg.clip, rng, max_batches,
                           desc=f"{cell} base {epoch}/{cfg.epochs}")
        acc = accuracy(model, data.test, max_batches=max_batches)
        curve.append({"cell": cell, "epoch": epoch, "train_loss": loss, "test_acc": acc,
                      "seconds": time.time() - t0})
        log.info("%s base epoch %d | loss %.4f | test accuracy %.4f", cell, epoch, loss, acc)
    return model, curve


def run(cfg: PruneConfig, data: StudyData) -> tuple[list[dict], list[dict]]:
    """Rows of ``prune.csv`` (one per cell, regime, level, retraining epoch) and of ``prune_base.csv``."""
    max_batches = 1 if cfg.dry_run else None
    rows, base_rows = [], []
    for cell in cfg.cells:
        model, curve = train_base(cfg, cell, data, max_batches)
        base_rows += curve
        base_acc = curve[-1]["test_acc"]
        base_state = {k: v.clone() for k, v in model.state_dict().items()}
        jobs = [(r, p) for r in cfg.regimes for p in cfg.levels]
        for regime, pct in tqdm(jobs, desc=f"{cell} prune", unit="level", disable=None):
            model.load_state_dict(base_state)
            masks = install_masks(model)
            counts = prune_(masks, regime, pct / 100)
            masks.check()
            key = {"cell": cell, "regime": regime, "pruned_pct": pct, **counts, "base_acc": base_acc}
            acc = accuracy(model, data.test, max_batches=max_batches)
            rows.append({**key, "epoch": 0, "train_loss": float("nan"), "test_acc": acc})
            optimizer = adam(model, cfg.lr)
            rng = np.random.default_rng(torch_seed(cfg.seed, "retrain", cell, regime, pct))
            for epoch in range(1, cfg.retrain_epochs + 1):
                loss = train_epoch(model, masks, optimizer, data.train, cfg.batch_size, cfg.clip, rng, max_batches,
                                   desc=f"{cell} {regime} {pct}% retrain {epoch}")
                acc = accuracy(model, data.test, max_batches=max_batches)
                rows.append({**key, "epoch": epoch, "train_loss": loss, "test_acc": acc})
            masks.check()
            log.debug("%s %s %d%%: %.4f -> %.4f", cell, regime, pct, rows[-1 - cfg.retrain_epochs]["test_acc"], acc)
    return rows, base_rows


def up_to(flags: list[tuple[int, bool]]) -> int:
    """Largest level such that it and every smaller level are flagged true (0 if the smallest is not)."""
    best = 0
    for pct, ok in sorted(flags):
        if not ok:
            break
        best = pct
    return best


def holds_up_to(levels: list[tuple[int, float]], base_acc: float, tolerance: float) -> int:
    """Largest level such that it and every smaller level stay within ``tolerance`` of ``base_acc`` (0 if none)."""
    return up_to([(pct, acc >= base_acc - tolerance) for pct, acc in levels])


def summarise(rows: list[dict], cfg: PruneConfig) -> list[dict]:
    """Per cell and regime: base accuracy; how far accuracy holds right after pruning; how far it is back within
    tolerance after at most one retraining epoch (epoch 0 or 1, the thesis's "one epoch recovers"); and the
    retraining epochs each level needs to come back within tolerance (-1: not within ``retrain_epochs``)."""
    out = []
    for cell in cfg.cells:
        for regime in cfg.regimes:
            sub = [r for r in rows if r["cell"] == cell and r["regime"] == regime]
            if not sub:
                continue
            base = sub[0]["base_acc"]
            recover = {}
            for pct in cfg.levels:
                ok = [r["epoch"] for r in sub if r["pruned_pct"] == pct and r["test_acc"] >= base - cfg.tolerance]
                recover[pct] = min(ok) if ok else -1
            after_pruning = [(r["pruned_pct"], r["test_acc"]) for r in sub if r["epoch"] == 0]
            out.append({"cell": cell, "regime": regime, "base_acc": base,
                        "holds_no_retrain": holds_up_to(after_pruning, base, cfg.tolerance),
                        "recovers_one_epoch": up_to([(p, 0 <= e <= 1) for p, e in recover.items()])
                        if cfg.retrain_epochs else None,
                        "epochs_to_recover": " ".join(str(recover[p]) for p in cfg.levels)})
    return out


def format_summary(summary: list[dict], cfg: PruneConfig) -> str:
    head = (f"{'cell':9} {'regime':10} {'base acc':>8} {'holds@0ep':>9} {'back@<=1ep':>10}  "
            f"epochs to recover at {','.join(map(str, cfg.levels))}% (-1: not within {cfg.retrain_epochs})")
    lines = [head, "-" * len(head)]
    for s in summary:
        one = "-" if s["recovers_one_epoch"] is None else f"{s['recovers_one_epoch']}%"
        lines.append(f"{s['cell']:9} {s['regime']:10} {s['base_acc']:8.4f} {s['holds_no_retrain']:>8}% "
                     f"{one:>10}  {s['epochs_to_recover']}")
    lines.append(f"holds@0ep: largest pruning level up to which test accuracy right after pruning stays within "
                 f"{cfg.tolerance} of the unpruned model's; back@<=1ep: the same with the better of 0 and 1 "
                 f"retraining epochs")
    return "\n".join(lines)
