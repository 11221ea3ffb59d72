"""Data-parallel training: two gloo processes under torchrun keep identical weights and masks through
steps, topology updates and the averaged phase, and train like one process over the same batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from selfish_deploy.errors import UserError
from selfish_deploy.training.checkpoint import load_checkpoint
from selfish_deploy.training.distributed import World, columns, digest
from conftest import TINY_TRAIN_ARGS


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()  # two shared cores: spinning OpenMP threads slow tiny models 10x
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_columns_split_the_batch_contiguously():
    assert [columns(20, World(r, 2)) for r in (0, 1)] == [slice(0, 10), slice(10, 20)]
    assert columns(20, World()) == slice(0, 20)
    with pytest.raises(UserError, match="multiple of the number of processes"):
        columns(10, World(0, 3))


def test_digest_sees_one_flipped_bit():
    t = {"w": torch.ones(4, 3), "mask.w": torch.ones(4, 3, dtype=torch.bool)}
    flipped = {"w": t["w"].clone(), "mask.w": t["mask.w"].clone()}
    flipped["w"].view(torch.int32)[2, 1] ^= 1
    assert digest(t) == digest({k: v.clone() for k, v in t.items()}) != digest(flipped)


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_stay_identical_and_match_one(tmp_path, data_dir):
    from selfish_deploy.training.cli import main
    from selfish_deploy.training.methods import METHODS

    method = "selfish" if "selfish" in METHODS else "static"
    args = [*TINY_TRAIN_ARGS, "--data-dir", str(data_dir), "--method", method, "--update-every", "15",
            "--max-batches", "40", "--asgd-after", "1", "--epochs", "2", "--dropout", "0",
            # a gentle rate and no clipping: rounding differences stay at rounding size (at --lr 20 they
            # grow to ~1e-4 within an epoch), and a mis-scaled averaged gradient would show
            "--lr", "2", "--clip", "1000",
            "--checkpoint-minutes", "1e-9"]  # a collective mid-epoch checkpoint every AGREE_EVERY batches
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "selfish_deploy.training.cli"]
    # SIGTERM to torchrun after the first checkpoint inside epoch 1: it passes the signal on, both ranks
    # agree to stop at the next check (every AGREE_EVERY batches) with a checkpoint; the run is resumed.
    proc = subprocess.Popen([*torchrun, *args, "--out", str(ddp)], env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "checkpoint in epoch 1 after batch 10/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    seen.append(proc.stderr.read())
    assert proc.wait(timeout=300) != 0, "".join(seen)[-3000:]
    assert "stopped by SIGTERM" in "".join(seen)
    partial = load_checkpoint(ddp).get("partial")
    assert partial is None or len(partial["ranks"]) == 2  # each rank's own hidden state and loss so far
    proc = subprocess.run([*torchrun, "--resume", str(ddp)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    recs = records(ddp)
    syncs = [r for r in recs if r["event"] == "sync"]
    assert [s["epoch"] for s in syncs] == [1, 2]
    for s in syncs:  # weights, masks and averaged weights: bit-identical on both ranks
        assert s["world_size"] == 2 and len(s["digests"]) == 2 and s["digests"][0] == s["digests"][1]
    updates = [r for r in recs if r["event"] == "topology"]
    if method != "static":  # a topology update (in each phase) came before each comparison
        assert {u["phase"] for u in updates if u["step"] < syncs[0]["step"]} == {"sgd"}
        assert {u["phase"] for u in updates if syncs[0]["step"] < u["step"] < syncs[1]["step"]} == {"asgd"}
    # Only rank 0 wrote the run: one start record, one test record.
    assert [r["event"] for r in recs].count("start") == 1 and recs[-1]["event"] == "test"

    # Same global batch, averaged gradients, no dropout: the same training as one process, up to
    # float summation order.
    assert main([*args, "--out", str(single)]) == 0
    one = [r for r in records(single) if r["event"] == "epoch"]
    two = [r for r in recs if r["event"] == "epoch"]
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert a["step"] == b["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    a, b = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    for k in a:
        if k.startswith("mask."):
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_per_epoch_updates_stay_identical_on_two_processes(tmp_path, data_dir):
    """The default per-epoch update (after validation; none in the switch epoch, none after the last step)
    under torchrun: both ranks prune and regrow the same weights, in the SGD and the averaged phase."""
    args = [*TINY_TRAIN_ARGS, "--data-dir", str(data_dir), "--method", "selfish", "--max-batches", "3",
            "--epochs", "4", "--asgd-after", "2", "--out", str(tmp_path / "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "selfish_deploy.training.cli", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(tmp_path / "ddp")
    updates = [(u["epoch"], u["phase"]) for u in recs if u["event"] == "topology"]
    assert updates == [(1, "sgd"), (3, "asgd")]
    syncs = [r for r in recs if r["event"] == "sync"]
    assert [s["epoch"] for s in syncs] == [1, 2, 3, 4]
    assert all(s["digests"][0] == s["digests"][1] for s in syncs)  # after each epoch's update
