"""``selfish-study graphs``: random-graph Sparse-RNNs per generator and cell, and what their properties predict.

Protocol (thesis ch. 5): draw ``graphs`` graphs per generator (the same graphs for every cell: a paired design),
turn each into a masked wiring (``graphs.to_network``), train ``epochs`` epochs, record test accuracy; then
correlate accuracy with every graph property and regress it on all of them (k-fold ridge), per cell, both over all
generators together and per generator.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from tqdm import tqdm

from .analysis import correlations, kfold_r2
from .classifier import Classifier, install_masks
from .config import GraphConfig
from .graphs import draw, n_weights, to_network
from .loop import StudyData, accuracy, adam, torch_seed, train_epoch
from .properties import PROPERTIES, graph_properties

log = logging.getLogger(__name__)

ALL = "all"  # generator column value for statistics pooled over generators


def run(cfg: GraphConfig, data: StudyData) -> list[dict]:
    """One row of ``graphs.csv`` per (cell, generator, graph)."""
    max_batches = 1 if cfg.dry_run else None
    graphs = [(gen, i, draw(gen, i, cfg.seed, cfg.min_nodes, cfg.max_nodes))
              for gen in cfg.generators for i in range(cfg.graphs)]
    props = {(gen, i): graph_properties(g) for gen, i, g in graphs}
    rows = []
    jobs = [(cell, *graph) for cell in cfg.cells for graph in graphs]
    for cell, gen, i, g in tqdm(jobs, desc="graphs", unit="net", disable=None):
        t0 = time.time()
        net = to_network(g, cell, cfg.emb, cfg.recurrent)
        torch.manual_seed(torch_seed(cfg.seed, "graph-net", cell, gen, i))
        model = Classifier(net.wiring).to(data.device)
        masks = install_masks(model, net.masks)
        optimizer = adam(model, cfg.lr)
        rng = np.random.default_rng(torch_seed(cfg.seed, "graph-batches", cell, gen, i))
        loss = float("nan")
        for epoch in range(1, cfg.epochs + 1):
            loss = train_epoch(model, masks, optimizer, data.train, cfg.batch_size, cfg.clip, rng, max_batches,
                               desc=f"{cell} {gen} {i} epoch {epoch}")
        masks.check()
        acc = accuracy(model, data.test, max_batches=max_batches)
        rows.append({"cell": cell, "generator": gen, "graph": i, **props[(gen, i)],
                     "recurrent_weights": n_weights(net), "emb": net.wiring.emb, "train_loss": loss,
                     "test_acc": acc, "seconds": time.time() - t0})
        log.info("%s %s #%d: %d nodes, %d layers -> test accuracy %.4f (%.0fs)", cell, gen, i, g.n, g.depth, acc,
                 time.time() - t0)
    return rows


def analyse(rows: list[dict], cfg: GraphConfig) -> tuple[list[dict], list[dict]]:
    """Correlations (one row per cell, generator-or-all, property) and regression R² (one per cell, group)."""
    corr_rows, reg_rows = [], []
    features = PROPERTIES + ("recurrent_weights",)
    for cell in cfg.cells:
        for group in (ALL, *cfg.generators):
            sub = [r for r in rows if r["cell"] == cell and group in (ALL, r["generator"])]
            if not sub:
                continue
            acc = np.array([r["test_acc"] for r in sub])
            cols = {f: np.array([r[f] for r in sub], dtype=float) for f in features}
            for c in correlations(cols, acc):
                corr_rows.append({"cell": cell, "generator": group, **c})
            x = np.stack([cols[f] for f in PROPERTIES], axis=1)
            reg = kfold_r2(x, acc, k=cfg.folds, alpha=cfg.alpha, seed=cfg.seed)
            reg_rows.append({"cell": cell, "generator": group, **reg, "acc_mean": float(acc.mean()),
                             "acc_std": float(acc.std())})
    return corr_rows, reg_rows


def format_summary(corr_rows: list[dict], reg_rows: list[dict], top: int = 3) -> str:
    """Per cell and group: accuracy, cross-validated R², the ``top`` properties by |Pearson r|, and sources."""
    lines = [f"{'cell':9} {'graphs':15} {'n':>4} {'acc mean':>8} {'acc std':>7} {'CV R2':>6}  "
             f"r(sources)  top |Pearson r|"]
    lines.append("-" * 100)
    for reg in reg_rows:
        sub = [c for c in corr_rows if c["cell"] == reg["cell"] and c["generator"] == reg["generator"]]
        src = next(c["pearson_r"] for c in sub if c["property"] == "sources")
        best = ", ".join(f"{c['property']} {c['pearson_r']:+.2f}" for c in sub[:top] if c["pearson_r"] == c["pearson_r"])
        src_text = "-" if src != src else f"{src:+.2f}"
        r2_text = "-" if reg["r2"] != reg["r2"] else f"{reg['r2']:.2f}"
        lines.append(f"{reg['cell']:9} {reg['generator']:15} {reg['n']:4d} {reg['acc_mean']:8.4f} "
                     f"{reg['acc_std']:7.4f} {r2_text:>6}  {src_text:>10}  {best}")
    return "\n".join(lines)
