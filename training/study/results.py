"""The study directory: resolved config, CSV tables, a text summary and plots.

    OUT/
      config.json              resolved config, library versions, machine, wall time
      prune.csv                (prune) one row per cell, regime, level, retraining epoch (0 = right after pruning)
      prune_base.csv           (prune) base training curve per cell
      prune_summary.csv        (prune) per cell and regime: how far accuracy holds, epochs to recover
      graphs.csv               (graphs) one row per cell, generator, graph: properties and test accuracy
      graphs_correlations.csv  (graphs) Pearson/Spearman of accuracy with each property, per cell and group
      graphs_regression.csv    (graphs) k-fold ridge R² of accuracy from all properties, per cell and group
      summary.txt              the table the command prints
      plots/                   PNG plots
"""

from __future__ import annotations

import csv
import json
import math
import platform
from pathlib import Path


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Rows with the same keys, in order; floats written in full (``repr``), NaN as empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        if not rows:
            return path
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()})
    return path


def read_csv(path: Path) -> list[dict]:
    """Rows as dicts of strings (what ``write_csv`` wrote)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_config(path: Path, config: dict, seconds: float | None = None) -> Path:
    import networkx
    import numpy
    import scipy
    import torch

    info = {"config": config, "versions": {"torch": torch.__version__, "numpy": numpy.__version__,
                                            "scipy": scipy.__version__, "networkx": networkx.__version__,
                                            "python": platform.python_version()},
            "machine": platform.platform(), "torch_threads": torch.get_num_threads()}
    if seconds is not None:
        info["seconds"] = seconds
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return path
