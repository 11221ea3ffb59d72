"""Mask invariants: exact nnz per tensor, ERK budgets, tied weights, nothing alive off-mask."""

from __future__ import annotations

import math

import pytest
import torch

from selfish_deploy.masks import MaskRegistry, erk_densities
from selfish_deploy.families.stacked import CELLS as ARCHS
from selfish_deploy.model import ModelConfig, RNNLM


def tiny(arch="lstm", tie=True):
    return RNNLM(ModelConfig(arch=arch, vocab_size=97, emb=12, hidden=20, layers=2, tie_weights=tie))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("density", [0.05, 0.33, 0.9])
def test_uniform_exact_nnz(arch, density):
    model = tiny(arch)
    masks = MaskRegistry(model, density, generator=torch.Generator().manual_seed(1))
    for n, p in masks.params.items():
        assert masks.nnz(n) == round(density * p.numel())
        assert int((p != 0).sum()) <= masks.nnz(n)
    masks.check()


def test_registry_covers_every_matrix_once_and_skips_biases():
    tied = MaskRegistry(tiny(tie=True), 0.5)
    assert "encoder.weight" in tied.masks and "decoder.weight" not in tied.masks  # one shared mask
    assert all("bias" not in n for n in tied.masks)
    untied = MaskRegistry(tiny(tie=False), 0.5)
    assert {"encoder.weight", "decoder.weight"} <= set(untied.masks)
    assert set(untied.masks) - set(tied.masks) == {"decoder.weight"}
    model = tiny(tie=True)
    MaskRegistry(model, 0.5)
    assert model.decoder.weight is model.encoder.weight


def test_erk_keeps_total_budget_and_favours_small_layers():
    shapes = {"emb": (1000, 16), "ih": (64, 16), "hh": (64, 16), "small": (4, 4)}
    d = erk_densities(shapes, 0.2)
    total = sum(r * c for r, c in shapes.values())
    assert math.isclose(sum(d[n] * r * c for n, (r, c) in shapes.items()), 0.2 * total, rel_tol=1e-9)
    assert d["small"] == 1.0  # would exceed 1: made dense, the rest rescaled
    assert d["emb"] < d["ih"] and all(0 < v <= 1 for v in d.values())
    masks = MaskRegistry(tiny(), 0.2, distribution="erk")
    assert abs(sum(masks.target_nnz.values()) - 0.2 * sum(m.numel() for m in masks.masks.values())) <= len(masks.masks)


def test_masked_training_steps_keep_exact_nnz():
    torch.manual_seed(0)
    model = tiny()
    masks = MaskRegistry(model, 0.3, generator=torch.Generator().manual_seed(0))
    before = {n: m.clone() for n, m in masks.masks.items()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, weight_decay=0.01)
    x = torch.randint(0, 97, (5, 3))
    for _ in range(4):
        logits, _ = model(x, model.init_hidden(3))
        logits.sum().backward()
        masks.mask_grads_()
        opt.step()
        masks.apply_()
        masks.check()
        for n, p in masks.params.items():
            assert torch.equal(masks.masks[n], before[n])
            assert p.grad[~masks.masks[n]].abs().sum() == 0
            assert p[~masks.masks[n]].abs().sum() == 0


def test_mask_momentum_zeroes_dead_momentum_and_a_regrown_weight_starts_at_rest():
    torch.manual_seed(0)
    model = tiny()
    masks = MaskRegistry(model, 0.3, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    x = torch.randint(0, 97, (5, 3))

    def step():
        opt.zero_grad()
        logits, _ = model(x, model.init_hidden(3))
        logits.sum().backward()
        masks.mask_grads_()
        opt.step()
        masks.apply_()

    step()
    name = "rnns.0.weight_hh_l0"
    m = masks.masks[name]
    alive, dead = m.nonzero()[0].tolist(), (~m).nonzero()[0].tolist()
    buf = opt.state[masks.params[name]]["momentum_buffer"]
    assert buf[tuple(alive)] != 0
    m[tuple(alive)], m[tuple(dead)] = False, True  # a topology update: one weight dies, one regrows
    masks.apply_()
    masks.mask_momentum_(opt)
    assert buf[tuple(alive)] == 0 and not bool(buf[~m].any())
    old = masks.params[name].detach()[tuple(dead)].item()
    assert old == 0.0
    step()  # the regrown weight moves by its own gradient only: momentum was zero, so p = -lr * grad
    grad = masks.params[name].grad[tuple(dead)].item()
    assert masks.params[name].detach()[tuple(dead)].item() == pytest.approx(-grad)


def test_gate_densities_split_rows_by_gate():
    masks = MaskRegistry(tiny("lstm"), 1.0)
    m = masks.masks["rnns.0.weight_hh_l0"]  # (4*20, 20)
    m.zero_()
    m[20:40] = True  # only the forget gate alive
    assert masks.gate_densities("rnns.0.weight_hh_l0") == [0.0, 1.0, 0.0, 0.0]
    assert len(masks.gate_densities("encoder.weight")) == 1


def test_check_catches_violations():
    model = tiny()
    masks = MaskRegistry(model, 0.5)
    n = "rnns.0.weight_ih_l0"
    dead = (~masks.masks[n]).nonzero()[0]
    with torch.no_grad():
        masks.params[n][tuple(dead)] = 1.0
    with pytest.raises(AssertionError, match="outside the mask"):
        masks.check()
    masks.apply_()
    masks.masks[n][tuple(dead)] = True
    with pytest.raises(AssertionError, match="non-zeros"):
        masks.check()
