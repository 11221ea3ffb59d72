"""PNG plots of both studies, written to ``OUT/plots/``."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REGIME_COLOURS = {"both": "C0", "input": "C1", "recurrent": "C2"}
GENERATOR_COLOURS = {"barabasi_albert": "C0", "watts_strogatz": "C1", "erdos_renyi": "C2"}


def _grid(n: int) -> tuple:
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def prune_accuracy(rows: list[dict], out_dir: Path) -> Path:
    """Accuracy vs pruned percentage per cell: right after pruning (solid) and after one retraining epoch."""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fig, axes = _grid(len(cells))
    for ax, cell in zip(axes, cells):
        sub = [r for r in rows if r["cell"] == cell]
        ax.axhline(sub[0]["base_acc"], color="grey", lw=0.8, ls=":", label="unpruned")
        for regime in dict.fromkeys(r["regime"] for r in sub):
            for epoch, style in ((0, "-"), (1, "--")):
                pts = sorted((r["pruned_pct"], r["test_acc"]) for r in sub
                             if r["regime"] == regime and r["epoch"] == epoch)
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", ms=3, color=REGIME_COLOURS.get(regime),
                            label=f"{regime}, {'no retraining' if epoch == 0 else '1 epoch'}")
        ax.set_title(cell)
        ax.set_xlabel("weights pruned (%)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0.4, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, out_dir / "prune_accuracy.png")


def prune_recovery(rows: list[dict], out_dir: Path) -> Path:
    """Accuracy vs retraining epoch, one line per pruning level; one panel per cell and regime."""
    keys = list(dict.fromkeys((r["cell"], r["regime"]) for r in rows))
    regimes = list(dict.fromkeys(k[1] for k in keys))
    cells = list(dict.fromkeys(k[0] for k in keys))
    fig, axes = plt.subplots(len(cells), len(regimes), figsize=(4.2 * len(regimes), 3.2 * len(cells)),
                             squeeze=False, sharey=True)
    levels = sorted({r["pruned_pct"] for r in rows})
    cmap = plt.get_cmap("viridis")
    for i, cell in enumerate(cells):
        for j, regime in enumerate(regimes):
            ax = axes[i][j]
            for n, pct in enumerate(levels):
                pts = sorted((r["epoch"], r["test_acc"]) for r in rows
                             if r["cell"] == cell and r["regime"] == regime and r["pruned_pct"] == pct)
                if pts:
                    ax.plot(*zip(*pts), marker=".", ms=3, color=cmap(n / max(1, len(levels) - 1)), label=f"{pct}%")
            ax.set_title(f"{cell}, {regime}", fontsize=9)
            ax.set_xlabel("retraining epoch")
            ax.grid(True, alpha=0.3)
        axes[i][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=6, ncol=2, title="pruned", title_fontsize=6)
    return _save(fig, out_dir / "prune_recovery.png")


def graph_correlations(corr_rows: list[dict], out_dir: Path) -> Path:
    """Heat map of Pearson r (accuracy vs property), properties x cells, all generators pooled."""
    pooled = [c for c in corr_rows if c["generator"] == "all"]
    cells = list(dict.fromkeys(c["cell"] for c in pooled))
    props = list(dict.fromkeys(c["property"] for c in pooled))
    r = np.full((len(props), len(cells)), np.nan)
    for c in pooled:
        r[props.index(c["property"]), cells.index(c["cell"])] = c["pearson_r"]
    fig, ax = plt.subplots(figsize=(1.4 * len(cells) + 3, 0.3 * len(props) + 1.5))
    im = ax.imshow(r, cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cells)), cells)
    ax.set_yticks(range(len(props)), props, fontsize=8)
    for (i, j), v in np.ndenumerate(r):
        if not np.isnan(v):
            ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="Pearson r with test accuracy")
    return _save(fig, out_dir / "graphs_correlation.png")


def graph_scatter(rows: list[dict], corr_rows: list[dict], out_dir: Path) -> Path:
    """Accuracy vs the most correlated property (pooled) per cell, coloured by generator."""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fig, axes = _grid(len(cells))
    for ax, cell in zip(axes, cells):
        pooled = [c for c in corr_rows if c["cell"] == cell and c["generator"] == "all"
                  and c["pearson_r"] == c["pearson_r"]]
        prop = pooled[0]["property"] if pooled else "sources"
        for gen in dict.fromkeys(r["generator"] for r in rows):
            sub = [r for r in rows if r["cell"] == cell and r["generator"] == gen]
            ax.scatter([r[prop] for r in sub], [r["test_acc"] for r in sub], s=12, alpha=0.7,
                       color=GENERATOR_COLOURS.get(gen), label=gen)
        r = pooled[0]["pearson_r"] if pooled else float("nan")
        ax.set_title(f"{cell}: accuracy vs {prop} (r = {r:+.2f})", fontsize=9)
        ax.set_xlabel(prop)
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, out_dir / "graphs_scatter.png")
