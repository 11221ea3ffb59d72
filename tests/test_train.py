"""selfish-train end to end on ptb-tiny: run directory contents, mask invariants, exact resume, CLI errors."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from selfish_deploy.rundir import load_run
from selfish_deploy.training.checkpoint import load_checkpoint
from selfish_deploy.training.cli import main

from conftest import TINY_TRAIN_ARGS


def metrics(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # wall-clock timings are the only fields allowed to differ between equal runs
        for key in [k for k in r if k.endswith("_time_s")]:
            del r[key]
    return records


def train(data_dir, out, *extra):
    return main([*TINY_TRAIN_ARGS, "--data-dir", str(data_dir), "--out", str(out), *extra])


def test_run_directory_format(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["format"] == "selfish-run" and config["model"]["arch"] == "lstm"
    assert config["vocab_size"] == 5457 == len((tiny_run / "vocab.txt").read_text().splitlines())
    assert math.isclose(config["density"], 0.3, abs_tol=1e-4)
    assert set(config["density_per_tensor"]) == {"encoder.weight", "rnns.0.weight_ih_l0", "rnns.0.weight_hh_l0",
                                                 "rnns.1.weight_ih_l0", "rnns.1.weight_hh_l0"}
    assert config["results"]["test_ppl"] > 1
    epochs = metrics(tiny_run)
    assert [r["event"] for r in epochs] == ["start", "epoch", "test"]
    assert epochs[1]["val_ppl"] == pytest.approx(math.exp(epochs[1]["val_loss"]))
    assert (tiny_run / "plots" / "perplexity.png").stat().st_size > 1000


def test_saved_weights_respect_exact_masks(tiny_run):
    run = load_run(tiny_run)
    for name, mask in run.masks.items():
        assert int(mask.sum()) == round(0.3 * mask.numel()), name
        assert run.weights[name][~mask].abs().sum() == 0, name
    assert "decoder.weight" not in run.weights  # tied: stored once
    ckpt = load_checkpoint(tiny_run)
    for name, mask in ckpt["masks"].items():
        assert ckpt["weights"][name][~mask].abs().sum() == 0
    raw = load_file(str(tiny_run / "model.safetensors"))
    assert all(t.dtype == torch.bool for n, t in raw.items() if n.startswith("mask."))


def test_resume_is_exact(data_dir, tmp_path):
    assert train(data_dir, tmp_path / "straight", "--epochs", "2") == 0
    assert train(data_dir, tmp_path / "split", "--epochs", "2", "--stop-after-epoch", "1") == 0
    assert [r["event"] for r in metrics(tmp_path / "split")] == ["start", "epoch"]  # stopped, no test yet
    assert main(["--resume", str(tmp_path / "split")]) == 0
    assert metrics(tmp_path / "split") == metrics(tmp_path / "straight")
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


AWD_TINY = ["--arch", "awd_lstm", "--layers", "3", "--batch-size", "10", "--max-batches", "8"]  # variable BPTT


@pytest.mark.parametrize("extra", [
    ["--method", "selfish", "--asgd-after", "0", "--max-batches", "8"],  # averaging from the first step
    [*AWD_TINY, "--method", "selfish", "--update-every", "3", "--asgd-after", "1"],  # its own windows; in-epoch updates
], ids=["lstm-averaging", "awd-lstm"])
def test_sigterm_mid_epoch_checkpoints_and_resume_is_exact(data_dir, tmp_path, extra, capsys):
    """A real SIGTERM (sent from a global forward hook in the 5th training batch) stops the run at that
    batch's end with a checkpoint (exit code 143); resumed, the run equals one never stopped. The stopped run
    also checkpoints every batch (--checkpoint-minutes tiny): the checkpoints themselves change nothing."""
    assert train(data_dir, tmp_path / "straight", "--epochs", "2", *extra) == 0
    forwards, handler = 0, signal.getsignal(signal.SIGTERM)

    def sigterm_in_fifth_batch(module, args, output):
        nonlocal forwards
        if module.training and type(module).__name__ == "RNNLM":
            forwards += 1
            if forwards == 5:
                os.kill(os.getpid(), signal.SIGTERM)

    hook = torch.nn.modules.module.register_module_forward_hook(sigterm_in_fifth_batch)
    try:
        rc = train(data_dir, tmp_path / "split", "--epochs", "2", "--checkpoint-minutes", "1e-9", *extra)
    finally:
        hook.remove()
    assert rc == 143 and forwards == 5
    err = capsys.readouterr().err
    assert "stopped by SIGTERM in epoch 1 after batch 5/8" in err and "--resume" in err and "Traceback" not in err
    partial = load_checkpoint(tmp_path / "split")["partial"]
    assert partial["batches"] == 5 and len(partial["windows"]) == 8 and len(partial["ranks"]) == 1
    assert signal.getsignal(signal.SIGTERM) is handler  # the one before the run is back
    assert main(["--resume", str(tmp_path / "split")]) == 0
    assert metrics(tmp_path / "split") == metrics(tmp_path / "straight")
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "partial" not in load_checkpoint(tmp_path / "split")  # the last one is the epoch's


def test_an_existing_run_is_never_overwritten_by_accident(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1", "--dry-run") == 0
    before = (out / "model.safetensors").read_bytes()
    assert train(data_dir, out, "--epochs", "1", "--dry-run", "--hidden", "12") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "model.safetensors").read_bytes() == before  # untouched
    (out / "checkpoint" / "stale").write_text("from the replaced run")
    (out / "notes.txt").write_text("the user's, not the run's")
    assert train(data_dir, out, "--epochs", "1", "--dry-run", "--hidden", "12", "--overwrite") == 0
    assert json.loads((out / "config.json").read_text())["model"]["hidden"] == 12
    assert not (out / "checkpoint" / "stale").exists()  # nothing of the old run survives a replacement
    assert (out / "notes.txt").read_text() == "the user's, not the run's"
    assert train(data_dir, out, "--resume", str(out), "--overwrite") == 2
    assert "pass only one" in capsys.readouterr().err


def test_dense_method_has_full_masks(data_dir, tmp_path):
    assert train(data_dir, tmp_path / "dense", "--method", "dense", "--epochs", "1", "--dry-run") == 0
    run = load_run(tmp_path / "dense")
    assert all(bool(m.all()) for m in run.masks.values())
    assert json.loads((tmp_path / "dense" / "config.json").read_text())["density"] == 1.0


def test_recipe_then_flags_precedence(data_dir, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('hidden = 12\nemb = 10\ndensity = 0.5\ntie-weights = false\n')
    out = tmp_path / "recipe"
    assert main(["--config", str(recipe), "--hidden", "14", "--corpus", "ptb-tiny", "--data-dir", str(data_dir),
                 "--epochs", "1", "--dry-run", "--out", str(out)]) == 0
    train_cfg = json.loads((out / "config.json").read_text())["train"]
    assert (train_cfg["hidden"], train_cfg["emb"], train_cfg["density"], train_cfg["tie_weights"]) == (14, 10, 0.5, False)


@pytest.mark.parametrize("argv,fragment", [
    (["--density", "0"], "density"),
    (["--density", "1.5"], "density"),
    (["--arch", "transformer"], "invalid choice"),
    (["--epochs", "0"], "epochs"),
    (["--config", "/nonexistent/recipe.toml"], "recipe not found"),
    (["--resume", "/nonexistent/run"], "config.json"),
    (["--data-dir", "/nonexistent/data"], "no corpus files"),
])
def test_bad_input_exits_2_with_a_message(argv, fragment, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_stop_signals_first_ctrl_c_asks_second_stops_at_once():
    from selfish_deploy.training.stopping import StopSignals

    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == signal.SIGINT  # the first only asks
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
