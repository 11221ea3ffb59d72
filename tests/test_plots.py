"""Run plots: every run writes non-trivial PNGs; the gate and death-rate plots read topology records."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_TRAIN_ARGS
from matplotlib.image import imread

from selfish_deploy.training.plots import plot_run

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ("perplexity.png", "gate_density.png", "death_rate.png")


def assert_real_png(path):
    assert path.read_bytes()[:8] == PNG, path
    img = imread(str(path))[..., :3]  # (H, W, RGB) floats in [0, 1]
    assert img.shape[0] >= 300 and img.shape[1] >= 400
    ink = (img.min(axis=-1) < 0.9).mean()  # share of non-white pixels: axes, lines, text
    assert 0.01 < ink < 0.5, f"{path.name}: {ink:.3f} of the image is drawn"


def test_a_training_run_writes_its_plots(tiny_run):
    for name in PLOTS:
        assert_real_png(tiny_run / "plots" / name)


def synthetic_run(layers=2, updates=6):
    """Records as the trainer writes them for a Selfish-like run that switches to averaging."""
    gates = lambda s, k: [0.33 + 0.02 * g * s / updates * (-1) ** k for g in range(4)]  # noqa: E731
    names = [f"rnns.{k}.weight_{w}_l0" for k in range(layers) for w in ("ih", "hh")]
    recs = [{"event": "start", "epoch": 0, "step": 0, "gates": {n: gates(0, i) for i, n in enumerate(names)}}]
    for s in range(1, updates + 1):
        recs.append({"event": "topology", "epoch": s, "step": 100 * s, "lr": 20.0,
                     "phase": "sgd" if s < 4 else "asgd", "death_rate": 0.8 * (1 - s / (updates + 1)),
                     "gates": {n: gates(s, i) for i, n in enumerate(names)}, "density": {}, "removed": {},
                     "grown": {}})
        recs.append({"event": "epoch", "epoch": s, "step": 100 * s, "train_loss": 6.0 - 0.2 * s,
                     "val_loss": 5.8 - 0.1 * s, "val_ppl": float(np.exp(5.8 - 0.1 * s)), "lr": 20.0,
                     "phase": "sgd" if s <= 3 else "asgd", "gates": {}})
        if s == 3:
            recs.append({"event": "phase", "epoch": 3, "step": 300, "phase": "asgd", "reason": "trigger",
                         "lr": 20.0})
    return recs


@pytest.mark.parametrize("layers", [1, 3])
def test_plots_from_topology_records(tmp_path, layers):
    paths = plot_run(synthetic_run(layers), tmp_path)
    assert [p.name for p in paths] == list(PLOTS)
    for p in paths:
        assert_real_png(p)


def test_static_run_still_plots_and_empty_run_plots_nothing(tmp_path):
    static = [r for r in synthetic_run() if r["event"] != "topology"]
    assert [p.name for p in plot_run(static, tmp_path / "static")] == list(PLOTS)
    assert plot_run([], tmp_path / "empty") == [] and not (tmp_path / "empty").exists()


@pytest.mark.parametrize("every,calls", [(1e9, 2), (0.0, 4)])
def test_plots_are_redrawn_at_most_once_a_period_and_at_the_end(tmp_path, data_dir, monkeypatch, every, calls):
    """Drawing takes about a second: after the first epoch, then only when PLOT_EVERY_S has passed, and once
    at the end (three short epochs: epoch 1 + end, or every epoch + end)."""
    from selfish_deploy.training import trainer
    from selfish_deploy.training.cli import main

    drawn = []
    monkeypatch.setattr(trainer, "PLOT_EVERY_S", every)
    monkeypatch.setattr(trainer, "plot_run", lambda records, *a, **k: drawn.append(len(records)) or [])
    args = [*TINY_TRAIN_ARGS, "--data-dir", str(data_dir), "--epochs", "3", "--max-batches", "3",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert len(drawn) == calls and drawn == sorted(drawn)
