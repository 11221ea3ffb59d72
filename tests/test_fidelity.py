"""Issue 15, section 1: the training order follows the authors' code (Shiweiliuiiiiiii/Selfish-RNN) by
default, each of our earlier variants stays a flag, and every default is pinned against a step computed
here by hand: dense-gradient clipping, the per-epoch update after validation, regrowth of the just-died,
the evaluation batch sizes, and SNFS under the same optimizer as the other methods."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from selfish_deploy.data import batchify, get_batch, load_corpus
from selfish_deploy.masks import MaskRegistry
from selfish_deploy.model import RNNLM, ModelConfig, repackage
from selfish_deploy.rundir import load_run
from selfish_deploy.training import cli
from selfish_deploy.training.checkpoint import load_checkpoint
from selfish_deploy.training.config import TrainConfig
from selfish_deploy.training.methods import get_method
from selfish_deploy.training.optim import SNTASGD
from selfish_deploy.training.trainer import evaluate

# A tiny untied 1-layer LSTM without dropout: a run of a few batches takes a second or two.
SEED, DENSITY, LR, CLIP, BATCH, BPTT, EMB, HIDDEN = 5, 0.33, 2.0, 0.05, 4, 10, 10, 12
ARGS = ["--corpus", "ptb-tiny", "--arch", "lstm", "--layers", "1", "--hidden", str(HIDDEN), "--emb", str(EMB),
        "--no-tie-weights", "--dropout", "0", "--density", str(DENSITY), "--batch-size", str(BATCH),
        "--bptt", str(BPTT), "--seed", str(SEED), "--lr", str(LR), "--clip", str(CLIP), "--log-interval", "1000"]


def train(data_dir, out, *extra) -> None:
    assert cli.main([*ARGS, "--data-dir", str(data_dir), "--out", str(out), *extra]) == 0


def records(out) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_time_s")}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def hand_steps(data_dir, n: int, masked_clip: bool = False, momentum: float = 0.0):
    """``n`` training steps written out as the authors' ``main.py`` ``train()`` runs them: backward,
    ``clip_grad_norm_`` over every gradient (``masked_clip``: over the masked ones, our order before issue 15),
    SGD step on the dense gradient (momentum buffers as ``torch.optim.SGD``'s), then ``apply_mask`` on weights
    and momentum buffers. Model, masks and data are built as the trainer builds them from the seed.
    Returns the weights and the gradient norm before each clip."""
    torch.manual_seed(SEED)
    corpus = load_corpus("ptb-tiny", str(data_dir))
    data = batchify(corpus.train, BATCH)
    model = RNNLM(ModelConfig(arch="lstm", vocab_size=len(corpus.vocab), emb=EMB, hidden=HIDDEN, layers=1,
                              dropout=0.0, tie_weights=False))
    masks = MaskRegistry(model, DENSITY, "uniform", torch.Generator().manual_seed(SEED), arch="lstm")
    mask_of = {masks.params[name]: m for name, m in masks.masks.items()}
    params, bufs, norms = list(model.parameters()), {}, []
    state = model.init_hidden(BATCH)
    for b in range(n):
        x, y = get_batch(data, b * BPTT, BPTT)
        state = repackage(state)
        model.zero_grad(set_to_none=True)
        logits, state = model(x, state)
        F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)).backward()
        grads = {p: p.grad.detach().double() * (mask_of[p] if (masked_clip and p in mask_of) else 1) for p in params}
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
        norms.append(norm)
        coef = min(1.0, CLIP / (norm + 1e-6))
        with torch.no_grad():
            for p in params:
                d = grads[p] * coef
                if momentum:
                    d = bufs[p] = d if p not in bufs else momentum * bufs[p] + d
                p.sub_((LR * d).to(p.dtype))
                if p in mask_of:  # apply_mask: weights and momentum buffer
                    p.mul_(mask_of[p])
                    if p in bufs:
                        bufs[p] = bufs[p] * mask_of[p]
    return {n: p.detach().clone() for n, p in model.named_parameters()}, norms


def assert_weights(out, expected: dict, atol=1e-6) -> None:
    weights = load_checkpoint(out)["weights"]
    assert weights.keys() == expected.keys()
    for n in expected:
        torch.testing.assert_close(weights[n], expected[n], atol=atol, rtol=0, msg=n)


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


# -- 1. clipping sees the dense gradient -----------------------------------------------------------

def test_clipping_sees_the_dense_gradient(data_dir, tmp_path):
    dense, dense_norms = hand_steps(data_dir, 2)
    masked, masked_norms = hand_steps(data_dir, 2, masked_clip=True)
    # the clip binds in every step either way, and the dense norm is the larger (only alive weights count
    # in the masked one), so every clipped step of the old order was larger (here, at init, the dense decoder
    # bias dominates both norms: 3% apart; 1.47x on the trained bundled model)
    assert all(d > m > CLIP for d, m in zip(dense_norms, masked_norms))
    assert max_diff(dense, masked) > 1e-4  # 1000x the tolerance below

    train(data_dir, tmp_path / "default", "--method", "static", "--epochs", "1", "--max-batches", "2")
    assert_weights(tmp_path / "default", dense)
    train(data_dir, tmp_path / "old", "--method", "static", "--epochs", "1", "--max-batches", "2",
          "--clip-masked-grad")
    assert_weights(tmp_path / "old", masked)


# -- 2. the per-epoch update comes after validation -------------------------------------------------

def network_loss(data_dir, weights: dict, masks: dict, batch_size: int = 20) -> float:
    """Validation loss of a network given by weights and masks (bptt as the run)."""
    corpus = load_corpus("ptb-tiny", str(data_dir))
    model = RNNLM(ModelConfig(arch="lstm", vocab_size=len(corpus.vocab), emb=EMB, hidden=HIDDEN, layers=1,
                              dropout=0.0, tie_weights=False))
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(weights[n] * masks[n] if n in masks else weights[n])
    return evaluate(model, batchify(corpus.valid, batch_size), BPTT)


def test_per_epoch_update_comes_after_validation_and_resumes_exactly(data_dir, tmp_path):
    args = ["--method", "selfish", "--max-batches", "3", "--epochs", "2"]
    split, straight = tmp_path / "split", tmp_path / "straight"
    train(data_dir, split, *args, "--stop-after-epoch", "1")
    recs = records(split)
    assert [r["event"] for r in recs] == ["start", "epoch", "topology"]  # the update comes last
    epoch, topo = recs[1], recs[2]
    assert epoch["step"] == topo["step"] == 3 and topo["epoch"] == 1
    # model.safetensors was saved at validation, before the update; the checkpoint holds the updated network
    best = load_run(split)
    ckpt = load_checkpoint(split)
    before = network_loss(data_dir, best.weights, best.masks)
    after = network_loss(data_dir, ckpt["weights"], ckpt["masks"])
    assert epoch["val_loss"] == pytest.approx(before, abs=1e-6)  # validation saw the network before the update
    assert abs(after - before) > 2e-5  # and the update changed it (an almost untrained net: slightly)
    for n, m in ckpt["masks"].items():
        assert not torch.equal(m, best.masks[n]) and int(m.sum()) == int(best.masks[n].sum())  # exact nnz
        assert not bool(ckpt["weights"][n][~m].any())
    # stopped after the update, resumed: the same as never stopped
    assert cli.main(["--resume", str(split)]) == 0
    train(data_dir, straight, *args)
    assert records(split) == records(straight)
    assert [r["event"] for r in records(straight)] == ["start", "epoch", "topology", "epoch", "test"]
    for name in ("model.safetensors", "checkpoint/state.safetensors"):
        a, b = load_file(str(split / name)), load_file(str(straight / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_update_every_keeps_the_in_epoch_update_before_validation(data_dir, tmp_path):
    out = tmp_path / "old"
    train(data_dir, out, "--method", "selfish", "--max-batches", "3", "--epochs", "2", "--update-every", "3",
          "--stop-after-epoch", "1")
    recs = records(out)
    assert [r["event"] for r in recs] == ["start", "topology", "epoch"]  # updated on the last batch
    best, ckpt = load_run(out), load_checkpoint(out)
    assert all(torch.equal(best.masks[n], m) for n, m in ckpt["masks"].items())  # validated after the update
    assert recs[2]["val_loss"] == pytest.approx(network_loss(data_dir, best.weights, best.masks), abs=1e-6)


def test_no_update_in_the_epoch_that_switches_to_averaging(data_dir, tmp_path):
    """main.py calls ``at_end_of_epoch`` in the SGD branch only while ``'t0'`` is not in the optimizer,
    which the switch to Sparse_ASGD has just put there; in the averaged phase, every epoch again."""
    common = ["--method", "selfish", "--max-batches", "2", "--epochs", "3"]
    train(data_dir, tmp_path / "asgd", *common, "--asgd-after", "1")
    train(data_dir, tmp_path / "sgd", *common, "--optimizer", "sgd")
    topo = {d: [r["epoch"] for r in records(tmp_path / d) if r["event"] == "topology"] for d in ("asgd", "sgd")}
    assert topo == {"asgd": [2], "sgd": [1, 2]}  # never after the last epoch
    assert [r["epoch"] for r in records(tmp_path / "asgd") if r["event"] == "phase"] == [1]


# -- 3. regrowth may pick a weight that just died ---------------------------------------------------

class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 2, bias=False)  # "a.weight", (2, 4): one gate


W = [0.1, -0.2, 0.8, 0.9, -0.7, 0.6, 0.0, 0.0]  # 6 alive, 2 inactive
ALIVE = [True] * 6 + [False] * 2


def drawn(seed: int) -> list[int]:
    """The positions selfish grows with this seed on ``W`` at death rate 0.5: randperm(5)[:3] over the five
    zeros left after death (0, 1, 5 just died; 6, 7 were inactive), listed in increasing order."""
    return [[0, 1, 5, 6, 7][i] for i in torch.randperm(5, generator=torch.Generator().manual_seed(seed))[:3]]


def one(seed: int, **cfg):
    model = One()
    registry = MaskRegistry(model, 1.0, arch="lstm")
    with torch.no_grad():
        registry.masks["a.weight"].copy_(torch.tensor(ALIVE).view(2, 4))
        registry.params["a.weight"].copy_(torch.tensor(W).view(2, 4))
        registry.target_nnz["a.weight"] = 6
    method = get_method("selfish")(registry, 100, TrainConfig(method="selfish", **cfg),
                                   torch.Generator().manual_seed(seed))
    return model, registry, method


def test_regrowth_draws_among_all_zeros_and_a_regrown_dead_weight_keeps_its_value():
    # death rate 0.5: ceil(3.0) = 3 die (0.1, -0.2, 0.6: positions 0, 1, 5); growth draws 3 of the 5 zeros
    # left (positions 0, 1, 5, 6, 7, increasing), exactly as topology.random_choice: randperm(5)[:3]
    regrown_0 = 0
    for seed in range(60):
        _, registry, method = one(seed)
        rec = method.rewire(0.5)
        grown = drawn(seed)
        alive = sorted([2, 3, 4] + grown)
        flat = registry.masks["a.weight"].view(-1)
        assert flat.nonzero().view(-1).tolist() == alive and registry.nnz("a.weight") == 6  # exact nnz
        expected = [W[i] if (i in (2, 3, 4) or i in grown and i in (0, 1, 5)) else 0.0 for i in range(8)]
        assert registry.params["a.weight"].view(-1).tolist() == pytest.approx(expected)  # kept or new at 0
        assert rec["removed"]["a.weight"] == rec["grown"]["a.weight"] == 3
        assert any(i in (0, 1, 5) for i in grown)  # 3 of 5 with only 2 fresh zeros: a dead one always returns
        registry.check()
        regrown_0 += 0 in grown
    assert 0 < regrown_0 < 60  # position 0 (just died) comes back with probability 3/5

    # --regrow-exclude-dead: at most the 2 inactive positions may grow, so 2 die and never come back
    _, registry, method = one(0, regrow_exclude_dead=True)
    rec = method.rewire(0.5)
    assert rec["removed"]["a.weight"] == 2
    assert registry.masks["a.weight"].view(-1).tolist() == [False, False, True, True, True, True, True, True]
    assert registry.params["a.weight"].view(-1).tolist() == pytest.approx([0, 0, 0.8, 0.9, -0.7, 0.6, 0, 0])


def test_a_regrown_dead_weight_keeps_its_average_as_in_sparse_asgd():
    """Sparse_ASGD resets a weight's step counter only where its mask is 0; a just-died weight drawn again
    never is, so its average and age go on (and a fresh position starts at age 0)."""
    seed = next(s for s in range(100) if 0 in drawn(s) and 6 in drawn(s))
    model, registry, method = one(seed)
    opt = SNTASGD(dict(model.named_parameters()), registry.masks, lr=1e-3, asgd_after=0)  # keeps |w|'s order
    gen = torch.Generator().manual_seed(1)

    def step():
        model.a.weight.grad = torch.randn(2, 4, generator=gen) * registry.masks["a.weight"]
        opt.step()
        registry.apply_()

    step()
    step()
    method.rewire(0.5)
    assert registry.masks["a.weight"].view(-1).nonzero().view(-1).tolist() == sorted([2, 3, 4] + drawn(seed))
    step()
    ages = opt.ages("a.weight").view(-1)
    assert ages[0] == 3 and ages[6] == 1 and ages[2] == 3  # regrown dead: continued; fresh: restarted
    assert all(ages[i] == 0 for i in range(8) if not registry.masks["a.weight"].view(-1)[i])


# -- 4. evaluation batch sizes ----------------------------------------------------------------------

def test_evaluation_batch_sizes_are_the_authors_and_configurable(data_dir, tmp_path):
    assert (TrainConfig().eval_batch_size, TrainConfig().test_batch_size) == (20, None)  # main.py: 20 for both
    corpus = load_corpus("ptb-tiny", str(data_dir))
    for out, flags, (val_bs, test_bs) in ((tmp_path / "default", [], (20, 20)),
                                          (tmp_path / "onlstm", ["--eval-batch-size", "10", "--test-batch-size",
                                                                 "1"], (10, 1))):
        train(data_dir, out, "--method", "static", "--epochs", "1", "--max-batches", "1", *flags)
        results = json.loads((out / "config.json").read_text())["results"]
        model = load_run(out).build_model()
        for split, bs, key in ((corpus.valid, val_bs, "val_ppl"), (corpus.test, test_bs, "test_ppl")):
            assert results[key] == pytest.approx(math.exp(evaluate(model, batchify(split, bs), BPTT)), rel=1e-6)
        assert results["test_ppl"] != pytest.approx(math.exp(evaluate(model, batchify(corpus.test, 7), BPTT)),
                                                    rel=1e-6)  # the batch size matters: the check can fail


# -- 5. SNFS under the same optimizer as the others -------------------------------------------------

def test_snfs_trains_without_momentum_unless_asked(data_dir, tmp_path):
    plain, _ = hand_steps(data_dir, 2)
    heavy, _ = hand_steps(data_dir, 2, momentum=0.9)
    assert max_diff(plain, heavy) > 1e-4  # the second step tells momentum apart
    for method in ("snfs", "selfish"):
        train(data_dir, tmp_path / method, "--method", method, "--epochs", "1", "--max-batches", "2")
        assert load_checkpoint(tmp_path / method)["optimizer"]["param_groups"][0]["momentum"] == 0.0
    assert_weights(tmp_path / "snfs", plain)  # no update inside a 1-epoch run: the optimizer alone
    train(data_dir, tmp_path / "snfs-m", "--method", "snfs", "--epochs", "1", "--max-batches", "2",
          "--momentum", "0.9")
    assert load_checkpoint(tmp_path / "snfs-m")["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert_weights(tmp_path / "snfs-m", heavy)


# -- flags, config keys and old runs ----------------------------------------------------------------

def test_each_variant_is_a_flag_mapped_to_its_config_key():
    args = cli.build_parser().parse_args(["--clip-masked-grad", "--regrow-exclude-dead", "--momentum", "0.9",
                                          "--update-every", "7", "--eval-batch-size", "10",
                                          "--test-batch-size", "1"])
    cfg, resume = cli.resolve(args)
    assert not resume
    assert (cfg.clip_masked_grad, cfg.regrow_exclude_dead, cfg.momentum, cfg.update_every, cfg.eval_batch_size,
            cfg.test_batch_size) == (True, True, 0.9, 7, 10, 1)
    d = TrainConfig()
    assert (d.clip_masked_grad, d.regrow_exclude_dead, d.momentum, d.update_every) == (False, False, 0.0, None)
    assert get_method("selfish")(None, 100, d, None).per_epoch  # updates after validation by default


def test_a_run_from_before_issue_15_resumes_with_its_own_order(tmp_path, caplog):
    train_cfg = {k: v for k, v in TrainConfig(method="snfs").to_dict().items()
                 if k not in ("clip_masked_grad", "regrow_exclude_dead", "momentum", "test_batch_size")}
    (tmp_path / "config.json").write_text(json.dumps({"train": train_cfg}))
    cfg, resume = cli.resolve(cli.build_parser().parse_args(["--resume", str(tmp_path)]))
    assert resume and (cfg.clip_masked_grad, cfg.regrow_exclude_dead, cfg.momentum) == (True, True, 0.9)
    assert "predates issue 15" in caplog.text


# -- ON-LSTM's averaging restarts (main_ONLSTM.py --finetuning) ---------------------------------------------

def test_an_averaging_restart_keeps_the_epochs_topology_update(data_dir, tmp_path):
    """--asgd-restarts 2: averaging begins after epoch 1 (no update in the switch epoch, as main.py), starts
    again after epoch 2, whose topology update still runs (main_ONLSTM.py: at_end_of_epoch, then the new
    Sparse_ASGD), at the initial rate."""
    train(data_dir, tmp_path / "run", "--method", "selfish", "--max-batches", "3", "--epochs", "3",
          "--asgd-after", "1", "--asgd-restarts", "2", "--lr", "5")
    recs = records(tmp_path / "run")
    events = [(r["event"], r.get("epoch"), r.get("reason")) for r in recs if r["event"] != "start"]
    assert events == [("epoch", 1, None), ("phase", 1, "asgd_after"), ("epoch", 2, None), ("phase", 2, "restart"),
                      ("topology", 2, None), ("epoch", 3, None), ("test", None, None)]
    assert [r["lr"] for r in recs if r["event"] == "phase"] == [5.0, 5.0]
