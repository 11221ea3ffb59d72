"""SNT-ASGD: masked running averages checked against hand-computed means, the non-monotone trigger,
state round trips, and an exact resume in the middle of the averaged phase."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from selfish_deploy.training.optim import SNTASGD, AnnealedSGD, build_optimizer
from conftest import TINY_TRAIN_ARGS


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two shared cores: OpenMP threads that spin against other jobs make tiny models 10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(6, 5, generator=g))
        self.bias = torch.nn.Parameter(torch.randn(6, generator=g))


def make(momentum=0.0, asgd_after=0, nonmono=5, restarts=()):
    model = Tiny()
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask.view(-1)[::2] = True
    masks = {"weight": mask}
    with torch.no_grad():
        model.weight.mul_(mask)
    opt = SNTASGD(dict(model.named_parameters()), masks, lr=0.1, momentum=momentum, nonmono=nonmono,
                  asgd_after=asgd_after, restarts=restarts)
    return model, masks, opt


def sgd_step(model, masks, opt, gen):
    """One loop iteration as the trainer runs it: masked gradient, step, masks re-applied."""
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    model.weight.grad.masked_fill_(~masks["weight"], 0.0)
    opt.step()
    with torch.no_grad():
        model.weight.masked_fill_(~masks["weight"], 0.0)
    return model.weight.detach().clone(), model.bias.detach().clone()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_average_is_the_masked_running_mean(momentum):
    model, masks, opt = make(momentum)
    gen = torch.Generator().manual_seed(1)
    iterates = [sgd_step(model, masks, opt, gen) for _ in range(7)]
    w_mean = torch.stack([w for w, _ in iterates]).mean(0)
    b_mean = torch.stack([b for _, b in iterates]).mean(0)
    avg = opt.averaged()
    mask = masks["weight"]
    assert torch.all(avg["weight"][~mask] == 0)
    torch.testing.assert_close(avg["weight"][mask], w_mean[mask])
    torch.testing.assert_close(avg["bias"], b_mean)
    assert torch.all(opt.ages("weight")[mask] == 7) and torch.all(opt.ages("weight")[~mask] == 0)
    assert opt.ages("bias").item() == 7


@pytest.mark.parametrize("in_place", [True, False])
def test_regrown_weights_restart_their_average(in_place):
    model, masks, opt = make(momentum=0.9)
    gen = torch.Generator().manual_seed(2)
    first = [sgd_step(model, masks, opt, gen)[0] for _ in range(4)]
    flat = masks["weight"].view(-1)
    pruned, grown, kept = 0, 1, 2  # alive, dead, alive at the start
    regrown_same = 4  # alive: pruned and regrown in the same update (SNFS may do this)
    new = masks["weight"].clone()
    new.view(-1)[pruned], new.view(-1)[grown] = False, True
    if in_place:  # as topology.remove_/grow_ do
        flat[pruned], flat[grown] = False, True
    else:  # or a method may swap the tensor
        masks["weight"] = new
    with torch.no_grad():  # removed and grown weights are zeroed by the method
        model.weight.view(-1)[[pruned, grown, regrown_same]] = 0.0
    second = [sgd_step(model, masks, opt, gen)[0] for _ in range(3)]
    avg = opt.averaged()["weight"].view(-1)
    assert avg[pruned] == 0 and model.weight.view(-1)[pruned] == 0
    all_w = torch.stack(first + second).view(7, -1)
    torch.testing.assert_close(avg[kept], all_w[:, kept].mean())
    for i in (grown, regrown_same):
        torch.testing.assert_close(avg[i], all_w[4:, i].mean())
    ages = opt.ages("weight").view(-1)
    assert (ages[pruned], ages[grown], ages[regrown_same], ages[kept]) == (0, 3, 3, 7)
    assert torch.all(opt.averaged()["weight"][~masks["weight"]] == 0)


def test_eval_weights_swaps_averages_in_and_back():
    model, masks, opt = make()
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        sgd_step(model, masks, opt, gen)
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    avg = opt.averaged()
    with opt.eval_weights():
        for n, p in model.named_parameters():
            assert torch.equal(p, avg[n])
            assert not torch.equal(p, raw[n])
    for n, p in model.named_parameters():
        assert torch.equal(p, raw[n])


def trigger_epoch(losses, nonmono):
    """AWD-LSTM's rule, written out: the first epoch whose loss is worse than the best one older than the
    last ``nonmono`` epochs."""
    history = []
    for epoch, v in enumerate(losses, 1):
        if len(history) > nonmono and v > min(history[:-nonmono]):
            return epoch
        history.append(v)
    return None


def test_trigger_fires_on_the_non_monotone_criterion_and_not_before():
    # epochs 4 and 5 are worse than epoch 3 but within the last 2; epoch 7 is worse than an older best
    losses = [5.0, 4.0, 3.0, 3.5, 3.6, 2.9, 4.1, 2.0]
    assert trigger_epoch(losses, 2) == 7
    model, _, opt = make(asgd_after=None, nonmono=2)
    for g in opt.param_groups:
        g["lr"] = 0.05  # as if something had changed it: averaging restarts at --lr
    for epoch, v in enumerate(losses, 1):
        info = opt.on_epoch_end(v)
        assert info["phase"] == ("sgd" if epoch <= 7 else "asgd")
        assert ("switch" in info) == (epoch == 7)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.history == losses[:7]
    # nothing fires on a monotone history; --asgd-after forces the switch
    _, _, opt = make(asgd_after=None, nonmono=1)
    assert all("switch" not in opt.on_epoch_end(5.0 - e) for e in range(10)) and opt.phase == "sgd"
    _, _, opt = make(asgd_after=2, nonmono=5)
    assert [opt.on_epoch_end(5.0 - e).get("switch") for e in range(3)] == [None, "asgd_after", None]


def test_averaging_restarts_after_the_given_epochs():
    """--asgd-restarts (main_ONLSTM.py --finetuning): after epoch 3, while averaging, the averages start again
    from the next iterate and the rate goes back to --lr; not in the SGD phase, not at other epochs."""
    model, masks, opt = make(asgd_after=None, nonmono=5, restarts=(2, 3))
    gen = torch.Generator().manual_seed(7)
    assert "restart" not in opt.on_epoch_end(1.0, 1) and opt.phase == "sgd"
    assert opt.on_epoch_end(0.9, 2).get("restart") is None  # epoch 2 is in SGD still: nothing to restart
    opt.start_averaging()
    iterates = [sgd_step(model, masks, opt, gen)[0] for _ in range(3)]
    assert torch.allclose(opt.averaged()["weight"], torch.stack(iterates).mean(0), atol=1e-7)
    for g in opt.param_groups:
        g["lr"] = 0.01
    info = opt.on_epoch_end(0.8, 3)
    assert info["restart"] is True and info["lr"] == 0.01 and opt.param_groups[0]["lr"] == 0.1
    after = [sgd_step(model, masks, opt, gen)[0] for _ in range(2)]
    want = torch.stack(after).mean(0)  # only the iterates after the restart
    assert torch.allclose(opt.averaged()["weight"], want, atol=1e-7)
    assert torch.equal(opt.averaged()["weight"] != 0, masks["weight"] & (want != 0))
    assert "restart" not in opt.on_epoch_end(0.7, 4)


def test_restart_epochs_from_a_recipe_and_the_command_line():
    from selfish_deploy.errors import UserError
    from selfish_deploy.training.cli import build_parser, resolve
    from selfish_deploy.training.config import TrainConfig

    cfg, _ = resolve(build_parser().parse_args(["--config", "ptb-on-lstm"]))
    assert cfg.asgd_restarts == [500, 1000]
    cfg, _ = resolve(build_parser().parse_args(["--config", "ptb-on-lstm", "--asgd-restarts", "7", "9"]))
    assert cfg.asgd_restarts == [7, 9] and TrainConfig().asgd_restarts == []
    opt = build_optimizer("snt-asgd", Tiny(), cfg, {})
    assert opt.restarts == (7, 9)
    for bad in ([0], 500, ["5"]):  # a recipe's `asgd_restarts = 500` is an error, not a crash
        with pytest.raises(UserError, match="--asgd-restarts"):
            TrainConfig(asgd_restarts=bad)


def test_state_dict_round_trip_continues_identically():
    model, masks, opt = make(momentum=0.9)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        sgd_step(model, masks, opt, gen)
    masks["weight"].view(-1)[[0, 1]] = torch.tensor([False, True])
    with torch.no_grad():
        model.weight.view(-1)[[0, 1]] = 0.0
    state = copy.deepcopy(opt.state_dict())  # as through a checkpoint: no shared tensors
    model2, masks2, _ = make(momentum=0.9)
    with torch.no_grad():
        for p2, p in zip(model2.parameters(), model.parameters()):
            p2.copy_(p)
    masks2["weight"] = masks["weight"].clone()
    opt2 = SNTASGD(dict(model2.named_parameters()), masks2, lr=0.1, momentum=0.9, asgd_after=None)
    opt2.load_state_dict(state)
    assert opt2.phase == "asgd"
    gen2 = torch.Generator().manual_seed(5)
    gen.manual_seed(5)
    for _ in range(3):
        a, b = sgd_step(model, masks, opt, gen), sgd_step(model2, masks2, opt2, gen2)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for n, t in opt.averaged().items():
        assert torch.equal(t, opt2.averaged()[n])


def test_sgd_keeps_annealing_and_momentum_is_passed():
    model = Tiny()
    opt = AnnealedSGD(model.parameters(), lr=1.0, anneal=4.0, momentum=0.9)
    assert opt.on_epoch_end(3.0) == {"lr": 1.0, "phase": "sgd"}
    opt.on_epoch_end(3.5)
    assert opt.param_groups[0]["lr"] == 0.25 and opt.param_groups[0]["momentum"] == 0.9

    class Cfg:
        lr, anneal, weight_decay, nonmono, asgd_after = 2.0, 4.0, 0.0, 5, None

    assert isinstance(build_optimizer("snt-asgd", model, Cfg, {}, 0.9), SNTASGD)
    assert build_optimizer("sgd", model, Cfg).param_groups[0]["momentum"] == 0.0  # no --momentum in Cfg
    Cfg.momentum = 0.5
    for name in ("sgd", "snt-asgd"):  # --momentum reaches both
        assert build_optimizer(name, model, Cfg, {}).param_groups[0]["momentum"] == 0.5


def read_metrics(path):
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("time_s")}
            for line in path.read_text().splitlines()]


def test_resume_in_the_averaged_phase_is_exact(tmp_path, data_dir):
    from safetensors.torch import load_file

    from selfish_deploy.training.cli import main
    from selfish_deploy.training.methods import METHODS

    method = "selfish" if "selfish" in METHODS else "static"
    args = [*TINY_TRAIN_ARGS, "--data-dir", str(data_dir), "--method", method, "--optimizer", "snt-asgd",
            "--asgd-after", "1", "--update-every", "15", "--max-batches", "40", "--epochs", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*args, "--out", str(straight)]) == 0
    assert main([*args, "--out", str(split), "--stop-after-epoch", "2"]) == 0
    assert main(["--resume", str(split)]) == 0

    records = read_metrics(straight / "metrics.jsonl")
    assert records == read_metrics(split / "metrics.jsonl")
    phases = [r["phase"] for r in records if r["event"] == "epoch"]
    assert phases == ["sgd", "asgd", "asgd"]
    if method == "selfish":  # topology changed while averaging
        assert any(r["event"] == "topology" and r["phase"] == "asgd" for r in records)
    for name in ("model.safetensors", "checkpoint/state.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(split / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the saved (averaged) model is exactly as sparse as its masks
    saved = load_file(str(straight / "model.safetensors"))
    for k, m in saved.items():
        if k.startswith("mask."):
            assert torch.all(saved[k[len("mask."):]][~m.bool()] == 0)
    assert math.isfinite(records[-1]["test_ppl"])
