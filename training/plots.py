"""PNG plots of a run's ``metrics.jsonl``, written to ``RUN_DIR/plots/``."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_validation(records: list[dict], out_dir: Path) -> Path | None:
    """Validation perplexity per epoch."""
    epochs = [r for r in records if r.get("event") == "epoch"]
    if not epochs:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["epoch"] for r in epochs], [r["val_ppl"] for r in epochs], marker="o", label="validation")
    ax.plot([r["epoch"] for r in epochs], [math.exp(min(r["train_loss"], 50)) for r in epochs],
            marker=".", alpha=0.6, label="train")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out_dir / "perplexity.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
