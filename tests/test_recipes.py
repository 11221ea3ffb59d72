"""Every bundled recipe loads into a valid TrainConfig; the paper's recipe has the paper's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

import selfish_deploy.training as training
from selfish_deploy.training.config import TrainConfig, load_recipe
from selfish_deploy.training.methods import METHODS
from selfish_deploy.training.optim import OPTIMIZERS

RECIPES = sorted((Path(training.__file__).parent / "recipes").glob("*.toml"))


def test_recipes_are_bundled():
    assert {"ptb-stacked-lstm", "ptb-cpu"} <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_into_a_valid_config(path):
    values = load_recipe(path)
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **values})  # unknown keys raise
    assert load_recipe(path.stem) == values  # found by name too
    assert cfg.method in METHODS and cfg.optimizer in OPTIMIZERS
    assert cfg.batch_size % 2 == 0  # splits over two processes
    assert (cfg.eval_batch_size, cfg.test_batch_size) == (20, 20)  # the authors' main.py, both recipes


def test_stacked_lstm_recipe_is_the_papers():
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **load_recipe("ptb-stacked-lstm")})
    assert (cfg.corpus, cfg.arch, cfg.layers, cfg.hidden, cfg.emb, cfg.tie_weights) == ("ptb", "lstm", 2, 1500, 1500,
                                                                                         False)
    assert (cfg.dropout, cfg.lr, cfg.weight_decay, cfg.clip, cfg.batch_size, cfg.bptt, cfg.epochs) == (
        0.65, 40.0, 1.2e-6, 0.25, 20, 35, 100)
    assert (cfg.density, cfg.seed, cfg.method, cfg.optimizer, cfg.nonmono) == (0.33, 1111, "selfish", "snt-asgd", 5)
    # main.py: --eval_batch_size 20 for validation and test; no momentum; the authors' training order
    assert (cfg.eval_batch_size, cfg.test_batch_size, cfg.momentum) == (20, 20, 0.0)
    assert not (cfg.clip_masked_grad or cfg.regrow_exclude_dead) and cfg.update_every is None
    assert METHODS["selfish"](None, 1, cfg, None).initial_death_rate == 0.8  # --death-rate 0.8


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("method, rate", [("selfish", 0.8), ("set", 0.3), ("rigl", 0.3)])
def test_recipes_leave_each_method_its_own_death_rate(path, method, rate):
    """A recipe shared by the methods benchmark must not impose Selfish-RNN's 0.8 on SET or RigL (it would
    rewire 80% of SET's weights every epoch)."""
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **load_recipe(path), "method": method})
    assert METHODS[method](None, 1, cfg, None).initial_death_rate == rate


def test_cpu_recipe_trains_through_the_cli(tmp_path, data_dir):
    from selfish_deploy.training.cli import main

    out = tmp_path / "run"
    assert main(["--config", "ptb-cpu", "--data-dir", str(data_dir), "--dry-run", "--epochs", "1",
                 "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()
