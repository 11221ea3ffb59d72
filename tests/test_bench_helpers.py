"""Helpers of the benchmark scripts that shape what RESULTS.md reports."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from train_methods import mean_training_density  # noqa: E402


def test_mean_training_density_weights_steps_and_tensor_sizes():
    sizes = {"a": 300, "b": 100}
    records = [
        {"event": "start"},
        {"event": "epoch", "step": 10, "density": {"a": 1.0, "b": 1.0}},
        {"event": "topology", "step": 20, "density": {"a": 0.5, "b": 0.1}},  # 0.4 overall
        {"event": "epoch", "step": 40, "density": {"a": 0.5, "b": 0.1}},
    ]
    # steps 0-20 dense, 20-40 at (0.5 * 300 + 0.1 * 100) / 400 = 0.4
    assert abs(mean_training_density(records, sizes) - 0.7) < 1e-12


def test_mean_training_density_of_a_fixed_mask_is_its_density():
    records = [{"event": "epoch", "step": s, "density": {"w": 0.33}} for s in (5, 10, 15)]
    assert abs(mean_training_density(records, {"w": 10}) - 0.33) < 1e-12


def test_replace_section_keeps_the_other_sections_in_place(tmp_path):
    from common import replace_section

    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\n## A\nold a\n\n## B\nb\n")
    replace_section(results, "## A", "## A\n\nnew a\n")
    assert results.read_text() == "# R\n\n## A\n\nnew a\n\n## B\nb\n"
    replace_section(results, "## C", "## C\nc")
    assert results.read_text().endswith("## B\nb\n\n## C\nc\n")


def test_kernels_ab_runs_engines_on_the_library_it_is_given(tmp_path):
    """benchmarks/kernels_ab.py's baseline: engines loaded inside ``library(path)`` call that copy of the
    library (a second handle, so its own symbols), and the engine's default comes back afterwards."""
    import shutil

    import pytest
    import torch

    from selfish_deploy import kernels
    from selfish_deploy.kernels import loader
    from selfish_deploy.runtime import SparseLM

    if not kernels.compiled_available():
        pytest.skip("compiled kernels not built")
    from kernels_ab import library

    copy = tmp_path / "copy.so"
    shutil.copy(loader.library_path(), copy)
    bundled = Path(kernels.__file__).resolve().parents[1] / "assets" / "ptb-lstm-sparse"
    own = kernels.kernels_for
    with library(str(copy)):
        other = SparseLM.load(bundled, backend="sparse", threads=1)
    assert kernels.kernels_for is own
    mine = SparseLM.load(bundled, backend="sparse", threads=1)
    assert other.backend.kernels.lib._name == str(copy) and mine.backend.kernels.lib._name != str(copy)
    tokens = torch.tensor([[3], [7], [11]])
    assert torch.equal(other.forward(tokens, None)[0], mine.forward(tokens, None)[0])


def test_speed_probe_reports_each_thread_count_and_restores_torchs():
    import torch
    from common import probe_line, speed_probe

    before = torch.get_num_threads()
    probes = [speed_probe((1,)), {1: 10.0}]
    assert torch.get_num_threads() == before and probes[0][1] > 0
    low = min(probes[0][1], 10.0)
    assert probe_line(probes).endswith(f"2 probes): 1 thread {low:.1f}-{max(probes[0][1], 10.0):.1f}.")


def test_previous_results_reuses_a_finished_run_of_the_same_recipe(tmp_path):
    """A dense run's nominal density does not count (dense forces 1.0); any other difference is refused."""
    from train_methods import previous_results
    from selfish_deploy.training.config import TrainConfig

    def stored(cfg, results):
        (tmp_path / "config.json").write_text(json.dumps({"train": cfg.to_dict(), "results": results}))

    dense_cli = TrainConfig.from_dict({"method": "dense", "density": 1.0, "out": "a"})
    dense_bench = TrainConfig.from_dict({"method": "dense", "density": 0.45, "out": "b"})
    stored(dense_cli, {"val_ppl": 100.0, "test_ppl": 97.0})
    assert previous_results(tmp_path, dense_bench) == {"val_ppl": 100.0, "test_ppl": 97.0}
    stored(dense_cli, {"val_ppl": 100.0})  # stopped before its test: not finished
    assert previous_results(tmp_path, dense_bench) is None
    selfish = TrainConfig.from_dict({"method": "selfish", "density": 0.45})
    stored(selfish, {"val_ppl": 120.0, "test_ppl": 116.0})
    with pytest.raises(SystemExit, match="density"):
        previous_results(tmp_path, TrainConfig.from_dict({"method": "selfish", "density": 0.33}))
