"""Shared fixtures: the corpora beside the repo, and a tiny real run and export made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Test models are tiny: one thread is as fast, and avoids OpenMP spin-waiting when the machine is busy.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"

TINY_TRAIN_ARGS = ["--corpus", "ptb-tiny", "--arch", "lstm", "--layers", "2", "--hidden", "24", "--emb", "16",
                   "--density", "0.3", "--batch-size", "20", "--bptt", "20", "--seed", "7", "--log-interval", "1000"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "ptb-tiny" / "train.txt").is_file():
        pytest.skip(f"corpora not found at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    """A real 1-epoch sparse LSTM run on ptb-tiny, trained through the CLI."""
    from selfish_deploy.training.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main([*TINY_TRAIN_ARGS, "--data-dir", str(data_dir), "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_run) -> Path:
    """The CSR export (fp32) of ``tiny_run``."""
    from selfish_deploy.export.cli import main

    out = tmp_path_factory.mktemp("exports") / "tiny"
    assert main([str(tiny_run), "--out", str(out)]) == 0
    return out
