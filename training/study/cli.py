"""``selfish-study``: Darji's sparsity study on the project's masked cells (``prune`` and ``graphs``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path

from selfish_deploy import cli
from selfish_deploy.errors import UserError
from selfish_deploy.families.stacked import CELLS as ARCHS

from .config import GraphConfig, PruneConfig
from .graphs import GENERATORS, RECURRENT
from .prune import REGIMES

log = logging.getLogger(__name__)

HELP = {
    "strings": "number of Reber strings, half valid (thesis: 25000)",
    "test_fraction": "fraction of the strings held out for testing (thesis: 0.25)",
    "min_len": "shortest string; lengths are uniform in [min-len, max-len] (thesis: 11)",
    "max_len": "longest string (thesis: 53)",
    "cells": "recurrent cells to study",
    "lr": "Adam learning rate",
    "clip": "gradient-norm clipping",
    "batch_size": "training batch size",
    "epochs": "training epochs of every model before it is measured",
    "seed": "random seed (strings, graphs, weights, batches)",
    "device": "cpu, cuda or cuda:N",
    "threads": "torch CPU threads (0: torch's default)",
    "out": "study directory to write",
    "dry_run": "one batch per epoch and evaluation: checks the whole path quickly",
    "hidden": "units per recurrent layer",
    "layers": "recurrent layers",
    "emb": "embedding width",
    "regimes": "which recurrent weights to prune: both = input and recurrent",
    "levels": "percentages of the regime's weights to prune, one study point each",
    "retrain_epochs": "retraining epochs (mask frozen) after pruning",
    "tolerance": "accuracy 'holds' while within this of the unpruned model's",
    "generators": "random-graph generators",
    "graphs": "graphs per generator (the same graphs for every cell)",
    "min_nodes": "fewest graph nodes (n is uniform in [min-nodes, max-nodes])",
    "max_nodes": "most graph nodes",
    "recurrent": "hidden-to-hidden weights inside a layer: self-loops only, dense (thesis) or none",
    "folds": "k of the k-fold cross-validated regression",
    "alpha": "ridge penalty on standardised properties (0: least squares; -1: chosen in each training fold by "
             "leave-one-out over 1e-3..1e3)",
}
HELP_GRAPHS = {"emb": "embedding width (0: one unit per source node, as the thesis)"}
CHOICES = {"cells": ARCHS, "regimes": tuple(REGIMES), "generators": GENERATORS, "recurrent": RECURRENT}
ALIASES = {"cells": ["--cell"], "generators": ["--generator"], "regimes": ["--regime"]}


def add_config_flags(p: argparse.ArgumentParser, config_cls, help_override: dict) -> None:
    """One kebab-case flag per config field (the field's default shown)."""
    defaults = config_cls()
    for f in fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = help_override.get(f.name, HELP[f.name])
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=None, help=text)
            continue
        kw = {"default": None, "choices": CHOICES.get(f.name)}
        if f.type.startswith("tuple["):
            kw.update(nargs="+", type=int if "int" in f.type else str)
            shown = " ".join(map(str, default))
        else:
            kw["type"] = {"int": int, "float": float}.get(f.type, str)
            shown = default
        p.add_argument(flag, *ALIASES.get(f.name, []), help=f"{text} (default: {shown})", **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfish-study",
        description="The sparsity study of Darji's thesis (arXiv 2407.20601) on Reber-grammar classification.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{prune,graphs}")
    prune = sub.add_parser("prune", help="one-shot magnitude pruning and retraining of stacked classifiers",
                           description="Train a dense classifier per cell, prune it by magnitude at every level "
                                       "in every regime, measure, retrain with the mask frozen.")
    graphs = sub.add_parser("graphs", help="random-graph Sparse-RNNs and the graph properties that predict them",
                            description="Train masked networks wired by random graphs; correlate and regress "
                                        "accuracy on graph properties.")
    for sp, cls, override in ((prune, PruneConfig, {}), (graphs, GraphConfig, HELP_GRAPHS)):
        sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        add_config_flags(sp, cls, override)
        sp.set_defaults(config_cls=cls)
    return p


def resolve(args: argparse.Namespace):
    cls = args.config_cls
    flags = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name) is not None}
    flags = {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items()}
    return cls(**flags)


def body(args: argparse.Namespace) -> int:
    import torch

    from selfish_deploy.training.trainer import resolve_device

    from . import graph_study, plots, prune_study
    from .loop import StudyData
    from .results import write_config, write_csv

    cfg = resolve(args)
    try:
        device = resolve_device(cfg.device)
    except RuntimeError as e:  # torch.device("bogus")
        raise UserError(f"bad --device {cfg.device!r}: {e}") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_config(out / "config.json", cfg.to_dict())
    log.info("config: %s", cfg.to_dict())
    t0 = time.time()
    data = StudyData.load(cfg, device)
    log.info("%d training and %d test strings", len(data.train), len(data.test))
    if args.command == "prune":
        rows, base = prune_study.run(cfg, data)
        summary = prune_study.summarise(rows, cfg)
        write_csv(out / "prune.csv", rows)
        write_csv(out / "prune_base.csv", base)
        write_csv(out / "prune_summary.csv", summary)
        plots.prune_accuracy(rows, out / "plots")
        plots.prune_recovery(rows, out / "plots")
        table = prune_study.format_summary(summary, cfg)
    else:
        rows = graph_study.run(cfg, data)
        corr, reg = graph_study.analyse(rows, cfg)
        write_csv(out / "graphs.csv", rows)
        write_csv(out / "graphs_correlations.csv", corr)
        write_csv(out / "graphs_regression.csv", reg)
        plots.graph_correlations(corr, out / "plots")
        plots.graph_scatter(rows, corr, out / "plots")
        table = graph_study.format_summary(corr, reg)
    write_config(out / "config.json", cfg.to_dict(), seconds=time.time() - t0)
    (out / "summary.txt").write_text(table + "\n", encoding="utf-8")
    sys.stdout.write(table + "\n")
    log.info("done in %.0fs -> %s", time.time() - t0, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
