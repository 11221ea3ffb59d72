"""PNG plots of a run's ``metrics.jsonl``, written to ``RUN_DIR/plots/``.

    perplexity.png   validation (and train) perplexity per epoch; the switch to SNT-ASGD averaging marked
    gate_density.png density of every gate (row block) of each trunk tensor over steps, one panel per layer:
                     for the stacked cells W_ih solid, W_hh dashed; block names from the model's family
    death_rate.png   death rate at each topology update, and the learning rate, over steps
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from selfish_deploy.families import gate_blocks  # noqa: E402

LAYER = re.compile(r"\.(\d+)\.")  # the first ".K." of a trunk tensor's name is its layer
STYLES = ("-", "--", ":", "-.")  # one per tensor of a layer, in name order
STACKED = re.compile(r"weight_(ih|hh)_l0$")  # the stacked cells' tensors: legend W_ih / W_hh


def plot_run(records: list[dict], out_dir: Path, config=None) -> list[Path]:
    """Every plot that ``records`` has data for; returns the files written. ``config`` (the run's
    ``ModelConfig``) names the gates; without it they are numbered."""
    written = [plot_validation(records, out_dir), plot_gate_density(records, out_dir, config),
               plot_death_rate(records, out_dir)]
    return [p for p in written if p is not None]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.set_layout_engine("constrained")  # tight_layout warned (and gave up) on the many-panel RHN gate plots
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _switch(records: list[dict], key: str) -> float | None:
    """Epoch or step at which averaging began, if it did."""
    return next((r[key] for r in records if r.get("event") == "phase" and r.get("phase") == "asgd"), None)


def plot_validation(records: list[dict], out_dir: Path) -> Path | None:
    """Validation perplexity per epoch."""
    epochs = [r for r in records if r.get("event") == "epoch"]
    if not epochs:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["epoch"] for r in epochs], [r["val_ppl"] for r in epochs], marker="o", label="validation")
    ax.plot([r["epoch"] for r in epochs], [math.exp(min(r["train_loss"], 50)) for r in epochs],
            marker=".", alpha=0.6, label="train")
    switch = _switch(records, "epoch")
    if switch is not None:
        ax.axvline(switch, color="gray", linestyle=":", label="averaging starts (SNT-ASGD)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, out_dir / "perplexity.png")


def _tensor_label(name: str) -> str:
    """``rnns.0.weight_ih_l0`` -> ``W_ih``; other families' tensors keep the part after the layer index."""
    m = STACKED.search(name)
    if m:
        return f"W_{m.group(1)}"
    layer = LAYER.search(name)
    rest = name[layer.end():] if layer else name
    return rest.removesuffix(".weight") or rest


def plot_gate_density(records: list[dict], out_dir: Path, config=None) -> Path | None:
    """Per-gate density of each layer's trunk tensors over steps."""
    series: dict[str, dict[int, list[float]]] = {}  # tensor -> step -> per-gate densities
    for r in records:
        if r.get("event") in ("start", "epoch", "topology") and isinstance(r.get("gates"), dict):
            for name, gates in r["gates"].items():
                if LAYER.search(name):
                    series.setdefault(name, {})[r["step"]] = gates
    if not series:
        return None
    by_layer: dict[int, list[str]] = {}
    for n in series:  # the trainer's order: per layer W_ih before W_hh
        by_layer.setdefault(int(LAYER.search(n).group(1)), []).append(n)
    # a panel per layer, or per four of its tensors (one line style each; the RHN has depth + 1 per layer)
    panels = [(layer, by_layer[layer][k:k + len(STYLES)]) for layer in sorted(by_layer)
              for k in range(0, len(by_layer[layer]), len(STYLES))]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.6), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (layer, names_here) in zip(axes[0], panels):
        for i, name in enumerate(names_here):
            points = series[name]
            steps = sorted(points)
            n_gates = len(points[steps[0]])
            names = gate_blocks(name, config) if config is not None else ()
            if len(names) != n_gates:
                names = tuple(str(g) for g in range(n_gates))
            for g in range(n_gates):
                ax.plot(steps, [points[s][g] for s in steps], STYLES[i % len(STYLES)], color=colors[g % len(colors)],
                        label=f"{_tensor_label(name)} {names[g]}", marker="." if len(steps) < 30 else None)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: lines stay clear
    axes[0][0].set_ylabel("density")
    fig.suptitle("per-gate density (line style: tensor, colour: gate)", fontsize=10)
    return _save(fig, out_dir / "gate_density.png")


def plot_death_rate(records: list[dict], out_dir: Path) -> Path | None:
    """Death rate at each topology update, and the learning rate, over steps."""
    updates = [r for r in records if r.get("event") == "topology" and "death_rate" in r]
    epochs = [r for r in records if r.get("event") == "epoch" and "lr" in r]
    # an epoch record holds the rate its steps (previous record's step, this step] trained with
    lrs = [(prev["step"] if prev else 0, r["lr"]) for prev, r in zip([None, *epochs], epochs)]
    lrs += [(epochs[-1]["step"], epochs[-1]["lr"])] if epochs else []
    if not updates and not lrs:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    if updates:
        top.plot([r["step"] for r in updates], [r["death_rate"] for r in updates], marker=".")
    else:
        top.text(0.5, 0.5, "no topology updates", ha="center", va="center", transform=top.transAxes)
    top.set_ylabel("death rate")
    top.grid(True, alpha=0.3)
    if lrs:
        bottom.step([s for s, _ in lrs], [lr for _, lr in lrs], where="post")
    switch = _switch(records, "step")
    if switch is not None:
        for ax in (top, bottom):
            ax.axvline(switch, color="gray", linestyle=":")
        bottom.annotate("averaging starts", (switch, 0.95), xycoords=("data", "axes fraction"), fontsize=8,
                        ha="left", va="top")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("step")
    bottom.grid(True, alpha=0.3)
    return _save(fig, out_dir / "death_rate.png")
