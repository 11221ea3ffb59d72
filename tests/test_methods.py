"""Sparse-training methods (issue 3): exact counts, removal and growth rules on hand-checked matrices,
schedules, determinism, exact resume, and one short Selfish-RNN run through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from selfish_deploy.errors import UserError
from selfish_deploy.masks import MaskRegistry
from selfish_deploy.model import RNNLM, ModelConfig
from selfish_deploy.training.checkpoint import load_checkpoint, save_checkpoint
from selfish_deploy.training.config import TrainConfig
from selfish_deploy.training.methods import METHODS, get_method, topology

VOCAB = 50
RECORD_KEYS = {"death_rate", "density", "gates", "removed", "grown"}


# -- helpers --------------------------------------------------------------------------------------

def tiny_model(arch="lstm", seed=0):
    torch.manual_seed(seed)
    return RNNLM(ModelConfig(arch=arch, vocab_size=VOCAB, emb=8, hidden=8, layers=2, dropout=0.0))


def build(name, *, density=0.3, total_steps=40, seed=0, arch="lstm", **cfg):
    """Model, registry and method wired as the trainer does (GMP's registry starts dense)."""
    cfg = TrainConfig(method=name, density=density, arch=arch, **cfg)
    model = tiny_model(arch, seed)
    method_cls = get_method(name)
    rng = torch.Generator().manual_seed(seed)
    masks = MaskRegistry(model, 1.0 if (method_cls.dense or method_cls.initial_density_one) else density,
                         cfg.distribution, rng, arch=arch)
    return model, masks, method_cls(masks, total_steps, cfg, rng), rng


def backward_on_step(model, step):
    """Gradients of the loss on random tokens fixed by the step number."""
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, VOCAB, (7, 3), generator=g)
    model.zero_grad(set_to_none=True)
    logits, _ = model(tokens[:-1], model.init_hidden(3))
    F.cross_entropy(logits.reshape(-1, VOCAB), tokens[1:].reshape(-1)).backward()


def train_steps(model, masks, method, start, stop, lr=0.5):
    """The trainer's per-batch order on random tokens fixed by the step number; returns
    ``[(step, record)]`` and checks every mask invariant after every step."""
    records = []
    for step in range(start, stop):
        backward_on_step(model, step)
        method.before_step(step)
        masks.mask_grads_()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)
        masks.apply_()
        before = {n: m.clone() for n, m in masks.masks.items()}
        rec = method.after_step(step + 1)
        if (step + 1) % method.steps_per_epoch == 0:  # end of an epoch: the per-epoch update, after validation
            assert rec is None or not method.per_epoch
            rec = method.at_epoch_end(step + 1) or rec
        masks.check()
        for n, m in masks.masks.items():
            assert torch.equal(m, before[n]) or rec is not None, "masks changed without a record"
            new = m & ~before[n]  # (a just-died weight selfish draws again keeps its value: not "new" here)
            assert not bool(masks.params[n].detach()[new].any()), f"{n}: a regrown weight is not zero"
        if rec is not None:
            assert set(rec) == RECORD_KEYS
            json.dumps(rec)  # goes to metrics.jsonl as is
            records.append((step + 1, rec))
    return records


class Two(nn.Module):
    """Two bare matrices for hand-written examples (names ``a.weight``, ``b.weight``; one gate each)."""

    def __init__(self, shape_a, shape_b=None):
        super().__init__()
        self.a = nn.Linear(shape_a[1], shape_a[0], bias=False)
        if shape_b:
            self.b = nn.Linear(shape_b[1], shape_b[0], bias=False)


def hand(name, weights: dict, masks_: dict, total_steps=10**6, **cfg):
    """A method over hand-set weights and masks (flat lists, row-major)."""
    shapes = {n: (len(w) // 4, 4) for n, w in weights.items()}
    model = Two(shapes["a.weight"], shapes.get("b.weight"))
    registry = MaskRegistry(model, 1.0, arch="lstm")
    with torch.no_grad():
        for n, w in weights.items():
            registry.masks[n].copy_(torch.tensor(masks_[n], dtype=torch.bool).view(shapes[n]))
            registry.params[n].copy_(torch.tensor(w).view(shapes[n]))
            registry.target_nnz[n] = int(registry.masks[n].sum())
    registry.apply_()
    config = TrainConfig(method=name, density=0.5, **cfg)
    return registry, get_method(name)(registry, total_steps, config, torch.Generator().manual_seed(0))


def flat_mask(registry, n):
    return registry.masks[n].reshape(-1).tolist()


# -- shared pieces --------------------------------------------------------------------------------

def test_cosine_death_rate_values_and_clamp():
    r0, rmin, T = 0.8, 0.005, 1000
    assert topology.cosine_death_rate(0, T, r0, rmin) == pytest.approx(0.8)
    assert topology.cosine_death_rate(T // 2, T, r0, rmin) == pytest.approx((0.8 + 0.005) / 2)
    assert topology.cosine_death_rate(T // 4, T, r0, rmin) == pytest.approx(rmin + 0.5 * (r0 - rmin) * (1 + 2**-0.5))
    assert topology.cosine_death_rate(T, T, r0, rmin) == pytest.approx(0.005)
    assert topology.cosine_death_rate(3 * T // 2, T, r0, rmin) == pytest.approx(0.005)  # clamped, not wrapped
    rates = [topology.cosine_death_rate(t, T, r0, rmin) for t in range(0, T + 1, 50)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_smallest_and_largest_break_ties_by_lower_index():
    scores = torch.tensor([0.5, 0.1, 0.1, 0.9, 0.1, 0.9])
    allowed = torch.tensor([True, True, False, True, True, True])
    assert topology.smallest(scores, allowed, 2).tolist() == [1, 4]
    assert topology.smallest(scores, allowed, 3).tolist() == [1, 4, 0]
    assert topology.largest(scores, allowed, 2).tolist() == [3, 5]
    with pytest.raises(ValueError):
        topology.smallest(scores, allowed, 6)


def test_random_choice_only_among_allowed_and_seeded():
    allowed = torch.zeros(100, dtype=torch.bool)
    allowed[::3] = True
    a = topology.random_choice(allowed, 20, torch.Generator().manual_seed(5))
    b = topology.random_choice(allowed, 20, torch.Generator().manual_seed(5))
    c = topology.random_choice(allowed, 20, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.tolist())) == 20 and all(i % 3 == 0 for i in a.tolist())


@pytest.mark.parametrize("budget, shares, capacity, expected", [
    (10, [1.0, 1.0], [100, 100], [5, 5]),
    (10, [3.0, 1.0], [100, 100], [8, 2]),  # 7.5 / 2.5: the tie in remainders goes to the lower index
    (10, [0.99, 0.01], [3, 100], [3, 7]),  # overflow of the full tensor goes to the other
    (7, [0.0, 0.0, 0.0], [5, 5, 5], [3, 2, 2]),  # no signal: even split
    (6, [1.0, 5.0, 0.0], [10, 2, 10], [4, 2, 0]),  # a zero share gets nothing while others have room
    (0, [1.0, 2.0], [1, 1], [0, 0]),
])
def test_allocate_is_exact_and_respects_capacity(budget, shares, capacity, expected):
    out = topology.allocate(budget, shares, capacity)
    assert out == expected
    assert sum(out) == budget and all(0 <= o <= c for o, c in zip(out, capacity))


def test_registry_lists_every_method():
    assert set(METHODS) == {"dense", "static", "selfish", "set", "rigl", "snfs", "dsr", "gmp"}
    assert METHODS["gmp"].initial_density_one and not METHODS["rigl"].initial_density_one


# -- invariants on a tiny LSTM --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["selfish", "set", "rigl", "static"])
def test_fixed_nnz_methods_keep_every_tensor_count(name):
    model, masks, method, _ = build(name, total_steps=40, epochs=4, update_every=5)
    start = dict(masks.target_nnz)
    start_masks = {n: m.clone() for n, m in masks.masks.items()}
    records = train_steps(model, masks, method, 0, 40)
    assert {n: masks.nnz(n) for n in masks} == start == masks.target_nnz
    if name == "static":
        assert records == [] and all(torch.equal(masks.masks[n], start_masks[n]) for n in masks)
        return
    expected_steps = [5, 10, 15, 20, 25, 30] if name == "rigl" else [5, 10, 15, 20, 25, 30, 35]  # rigl: <= 0.75 T
    assert [s for s, _ in records] == expected_steps
    for _, rec in records:
        assert rec["removed"] == rec["grown"]
        for n in masks:
            assert round(rec["density"][n] * masks.masks[n].numel()) == start[n]
    assert any(not torch.equal(masks.masks[n], start_masks[n]) for n in masks)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_under_snt_asgd_keeps_the_average_on_the_mask(name):
    """SNT-ASGD must work with every method: averaging from the first step while the topology moves,
    the averaged model is exactly as sparse as the current masks and ages are zero off-mask."""
    from selfish_deploy.training.optim import MOMENTUM, SNTASGD

    model, masks, method, _ = build(name, total_steps=40, epochs=4, update_every=5)
    opt = SNTASGD(dict(model.named_parameters()), masks.masks, lr=0.5, asgd_after=0,
                  momentum=MOMENTUM if name == "snfs" else 0.0)  # --momentum 0.9 too (snfs' old default)
    assert opt.phase == "asgd"
    updates = 0
    for step in range(40):
        backward_on_step(model, step)
        method.before_step(step)
        masks.mask_grads_()
        opt.step()
        masks.apply_()
        updates += method.after_step(step + 1) is not None
        masks.check()
        averaged = opt.averaged()
        for n, m in masks.masks.items():
            assert not bool(averaged[n][~m].any()), f"{name}: average alive off the mask of {n} at step {step}"
            assert not bool(opt.ages(n)[~m].any()), f"{name}: a dead weight of {n} has an age"
    assert (updates == 0) == (name in ("dense", "static"))
    if not method.dense and not method.initial_density_one and name not in ("snfs", "dsr"):
        assert {n: masks.nnz(n) for n in masks} == masks.target_nnz  # fixed per tensor
    averaged = opt.averaged()
    assert all(torch.isfinite(t).all() for t in averaged.values())
    assert any(not torch.equal(averaged[n], p.detach()) for n, p in model.named_parameters())  # really averaged


def test_selfish_regrow_exclude_dead_removes_exact_counts_and_never_regrows_the_dead():
    """``--regrow-exclude-dead``: our order before issue 15 (the default draws among the just-died too:
    tests/test_fidelity.py)."""
    model, masks, method, _ = build("selfish", density=0.3, total_steps=100, epochs=1, regrow_exclude_dead=True)
    train_steps(model, masks, method, 0, 3)
    old = {n: m.clone() for n, m in masks.masks.items()}
    rec = method.rewire(0.4)
    for n in masks:
        k = min(math.ceil(0.4 * masks.target_nnz[n]), masks.masks[n].numel() - masks.target_nnz[n])
        assert rec["removed"][n] == rec["grown"][n] == k
        # with the dead excluded from regrowth, exactly k old positions left and k new ones came in
        assert int((old[n] & ~masks.masks[n]).sum()) == k
        assert int((masks.masks[n] & ~old[n]).sum()) == k
    masks.check()


def test_selfish_death_competes_across_gates_and_gate_densities_drift():
    model, masks, method, _ = build("selfish", density=0.5, total_steps=100, epochs=1)
    name = "rnns.0.weight_hh_l0"  # (4*8, 8): gates i, f, g, o of 8 rows each
    mask, w = masks.masks[name], masks.params[name]
    with torch.no_grad():  # gate i's weights are all tiny: they must be the ones to die
        w[:8][mask[:8]] = 1e-4
        w[8:][mask[8:]] = torch.sign(w[8:][mask[8:]]) * 0.5 + w[8:][mask[8:]]
    nnz_i = int(mask[:8].sum())
    gates_before = masks.gate_densities(name)
    old = mask.clone()
    rate = (nnz_i - 1) / masks.target_nnz[name]
    k = math.ceil(rate * masks.target_nnz[name])
    assert k <= nnz_i
    method.rewire(rate)
    died = old & ~mask  # dead after the update: k died, a few of them were drawn again
    assert 0 < int(died.sum()) <= k and int(died[8:].sum()) == 0  # every death came from gate i
    assert masks.nnz(name) == masks.target_nnz[name]
    gates_after = masks.gate_densities(name)
    assert gates_after[0] < gates_before[0]  # gate i lost; growth was spread over all gates
    assert sum(gates_after) == pytest.approx(sum(gates_before))
    masks.check()


def test_selfish_gate_densities_drift_in_training_with_fixed_nnz():
    model, masks, method, _ = build("selfish", density=0.3, total_steps=30, epochs=3)  # per epoch: 10 steps
    gates0 = {n: masks.gate_densities(n) for n in masks if n.startswith("rnns.")}
    records = train_steps(model, masks, method, 0, 30)
    assert [s for s, _ in records] == [10, 20]  # once per epoch, none after the last step
    for s, rec in records:
        assert rec["death_rate"] == pytest.approx(topology.cosine_death_rate(s, 30, 0.8, 0.005))
    drift = [max(abs(a - b) for a, b in zip(gates0[n], records[-1][1]["gates"][n])) for n in gates0]
    assert max(drift) > 0.01
    for n in gates0:  # per-gate densities move, the tensor's total does not
        assert sum(records[-1][1]["gates"][n]) == pytest.approx(sum(gates0[n]))


@pytest.mark.parametrize("name", ["snfs", "dsr"])
def test_redistributing_methods_keep_the_total_exact(name):
    model, masks, method, _ = build(name, total_steps=40, epochs=4, update_every=4, death_rate=0.3)
    total = sum(masks.target_nnz.values())
    start = dict(masks.target_nnz)
    records = train_steps(model, masks, method, 0, 40)
    assert len(records) == 9
    assert sum(masks.nnz(n) for n in masks) == total == sum(masks.target_nnz.values())
    assert all(1 <= masks.nnz(n) <= masks.masks[n].numel() for n in masks)
    for _, rec in records:
        assert sum(rec["removed"].values()) == sum(rec["grown"].values())
    if name == "snfs":
        assert masks.target_nnz != start  # momentum moved non-zeros between tensors


def test_dense_method_never_changes_anything():
    model, masks, method, _ = build("dense", density=1.0, total_steps=10)
    assert all(m.all() for m in masks.masks.values())
    assert train_steps(model, masks, method, 0, 10) == []


# -- each baseline's rule on a hand-written matrix -------------------------------------------------

def test_set_kills_smallest_positives_and_negatives_closest_to_zero():
    # active: 0.1 0.2 0.3 0.4 (positives) and -0.5 -0.6 -0.7 -0.8 (negatives); 8 inactive positions
    w = [0.1, -0.5, 0.2, -0.6, 0.3, -0.7, 0.4, -0.8] + [0.0] * 8
    m = [1] * 8 + [0] * 8
    registry, method = hand("set", {"a.weight": w}, {"a.weight": m})
    rec = method.rewire(0.5)
    # 0.1, 0.2 and -0.5, -0.6 die (half of each sign); smallest-|w| overall would have killed 0.3 and 0.4
    # instead of -0.5 and -0.6. Dead positions may be drawn again for growth, but only at zero.
    flat = registry.params["a.weight"].reshape(-1)
    assert flat[:4].tolist() == [0.0] * 4
    assert flat[4:8].tolist() == pytest.approx([0.3, -0.7, 0.4, -0.8])
    assert flat_mask(registry, "a.weight")[4:8] == [True] * 4
    assert rec["removed"]["a.weight"] == rec["grown"]["a.weight"] == 4
    assert registry.nnz("a.weight") == 8
    registry.check()


def test_rigl_drops_smallest_and_grows_exactly_the_top_gradients():
    w = [0.9, -0.05, 0.3, 0.02, -0.7, 0.4] + [0.0] * 6
    m = [1] * 6 + [0] * 6
    registry, method = hand("rigl", {"a.weight": w}, {"a.weight": m}, total_steps=100, update_every=1)
    grad = torch.tensor([5.0, 0, 0, 0, 0, 0, 0.1, -3.0, 0.2, 2.0, -0.01, 0.0]).view(3, 4)
    registry.params["a.weight"].grad = grad
    method.before_step(0)  # step 1 is an update step: |grad| is kept before the loop masks it
    registry.mask_grads_()
    rec = method.rewire(0.5)  # k = 3: 0.02, -0.05, 0.3 die; |grad| 3.0, 2.0, 0.2 grow
    after = flat_mask(registry, "a.weight")
    assert after == [True, False, False, False, True, True, False, True, True, True, False, False]
    assert rec["removed"]["a.weight"] == rec["grown"]["a.weight"] == 3
    assert registry.params["a.weight"].reshape(-1)[[7, 8, 9]].tolist() == [0.0, 0.0, 0.0]
    # a dropped position whose gradient beats the inactive ones regrows (RigL's rule), at zero
    w2 = [0.01, 0.5, 0.6, 0.7] + [0.0] * 8
    registry, method = hand("rigl", {"a.weight": w2}, {"a.weight": [1] * 4 + [0] * 8}, total_steps=100,
                            update_every=1)
    registry.params["a.weight"].grad = torch.tensor([9.0] + [0.0] * 11).view(3, 4)
    method.before_step(0)
    method.rewire(0.25)
    assert flat_mask(registry, "a.weight")[:4] == [True] * 4 and registry.params["a.weight"][0, 0] == 0.0


def test_rigl_schedule_stops_at_stop_fraction_and_drop_fraction_decays():
    _, _, method, _ = build("rigl", total_steps=1000, update_every=100, death_rate=0.3)
    assert [s for s in range(1, 1001) if method.is_update_step(s)] == [100, 200, 300, 400, 500, 600, 700]
    assert method.death_rate(0) == pytest.approx(0.3)
    assert method.death_rate(375) == pytest.approx(0.15)
    assert method.death_rate(750) == pytest.approx(0.0)
    with pytest.raises(RuntimeError):
        method.rewire(0.3)  # growth needs this batch's gradients


def test_snfs_redistributes_by_momentum_and_grows_by_momentum():
    # a: 3x4 with 4 active; b: 3x4 with 4 active. Death rate 0.5 kills 2 in each (4 in all).
    wa = [0.1, 0.2, 0.8, 0.9] + [0.0] * 8
    wb = [0.1, 0.2, 0.8, 0.9] + [0.0] * 8
    m = [1] * 4 + [0] * 8
    registry, method = hand("snfs", {"a.weight": wa, "b.weight": wb}, {"a.weight": m, "b.weight": m})
    # momentum of active weights: mean 3.0 for a, 1.0 for b -> a gets 3 of the 4 regrowths, b gets 1
    ma = torch.tensor([3.0, 3.0, 3.0, 3.0, 0, 0.5, 0, 0.7, 0, 0.6, 0, 0])
    mb = torch.tensor([1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0, 0.2, 0, 0, 0.3])
    method.momentum = {"a.weight": ma.view(3, 4).clone(), "b.weight": mb.view(3, 4).clone()}
    rec = method.rewire(0.5)
    assert rec["removed"] == {"a.weight": 2, "b.weight": 2}
    assert rec["grown"] == {"a.weight": 3, "b.weight": 1}
    # a: 0.1, 0.2 die but have the largest momentum, so they regrow first (at zero), then |m| 0.7
    assert flat_mask(registry, "a.weight") == [True, True, True, True, False, False, False, True] + [False] * 4
    assert flat_mask(registry, "b.weight") == [True, False, True, True] + [False] * 8  # ties: lower index
    assert registry.params["a.weight"].reshape(-1)[[0, 1, 7]].tolist() == [0.0, 0.0, 0.0]
    assert registry.target_nnz == {"a.weight": 5, "b.weight": 3}
    registry.check()


def test_snfs_overflow_goes_to_the_other_tensor_and_momentum_is_an_ema():
    # a is small and almost full: its capacity caps its share; the rest goes to b
    wa = [0.1, 0.5, 0.6, 0.7] + [0.9] * 6 + [0.0, 0.0]
    ma = [1] * 10 + [0, 0]
    wb = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6] + [0.0] * 6
    mb = [1] * 6 + [0] * 6
    registry, method = hand("snfs", {"a.weight": wa, "b.weight": wb}, {"a.weight": ma, "b.weight": mb})
    method.momentum = {"a.weight": torch.full((3, 4), 100.0), "b.weight": torch.full((3, 4), 0.01)}
    rec = method.rewire(0.5)  # a loses 5, b loses 3; a could take 7 of the 8 but is capped at 12 - 5 = 7
    assert rec["removed"] == {"a.weight": 5, "b.weight": 3}
    assert rec["grown"] == {"a.weight": 7, "b.weight": 1}
    assert registry.target_nnz == {"a.weight": 12, "b.weight": 4}
    registry.check()
    # momentum: m = 0.9 m + 0.1 g on the dense gradient
    registry, method = hand("snfs", {"a.weight": wa}, {"a.weight": ma})
    registry.params["a.weight"].grad = torch.ones(3, 4)
    method.before_step(0)
    method.before_step(1)
    assert torch.allclose(method.momentum["a.weight"], torch.full((3, 4), 0.19))


def test_dsr_prunes_below_the_global_threshold_and_reallocates_by_survivors():
    wa = [0.001, 0.002, 0.5, 0.6, 0.7, 0.8] + [0.0] * 6
    wb = [0.003, 0.004, 0.005, 0.9] + [0.0] * 8
    ma, mb = [1] * 6 + [0] * 6, [1] * 4 + [0] * 8
    registry, method = hand("dsr", {"a.weight": wa, "b.weight": wb}, {"a.weight": ma, "b.weight": mb},
                            death_rate=0.1)
    method.threshold = 0.01
    rec = method.rewire()
    assert rec["removed"] == {"a.weight": 2, "b.weight": 3}  # every |w| < 0.01 dies
    assert rec["grown"] == {"a.weight": 4, "b.weight": 1}  # 5 freed, split 4:1 like the survivors
    assert rec["death_rate"] == pytest.approx(5 / 10)
    assert sum(registry.target_nnz.values()) == 10
    assert method.threshold == pytest.approx(0.005)  # 5 pruned > 1.1 * round(0.1 * 10): halve
    registry.check()
    # nothing below the threshold: nothing moves, and the threshold doubles (0 < 0.9 * target)
    with torch.no_grad():
        for n, m in registry.masks.items():
            registry.params[n][m] = 0.5
    method.threshold = 1e-6
    rec = method.rewire()
    assert sum(rec["removed"].values()) == 0 and method.threshold == pytest.approx(2e-6)


def test_dsr_never_empties_a_tensor():
    registry, method = hand("dsr", {"a.weight": [0.001] * 4 + [0.0] * 8, "b.weight": [0.9] * 4 + [0.0] * 8},
                            {"a.weight": [1] * 4 + [0] * 8, "b.weight": [1] * 4 + [0] * 8})
    method.threshold = 0.5
    method.rewire()
    assert registry.nnz("a.weight") >= 1 and sum(registry.target_nnz.values()) == 8


# -- GMP ------------------------------------------------------------------------------------------

def test_gmp_follows_the_cubic_schedule_exactly():
    T = 200
    model, masks, method, _ = build("gmp", density=0.2, total_steps=T, gmp_start=0.1, gmp_end=0.75,
                                    update_every=10)
    assert all(m.all() for m in masks.masks.values())
    t0, t_end = 20, 150
    final = {n: max(1, round(0.2 * m.numel())) for n, m in masks.masks.items()}

    def expected(n, t):
        numel = masks.masks[n].numel()
        frac = min(max((t - t0) / (t_end - t0), 0.0), 1.0)
        return numel - round((numel - final[n]) * (1 - (1 - frac) ** 3))

    records = dict(train_steps(model, masks, method, 0, 60))
    assert sorted(records) == [20, 30, 40, 50, 60]
    for n in masks:
        assert masks.nnz(n) == expected(n, 60)
        assert masks.density(n) < 1.0
    sparsity = 1 - sum(masks.target_nnz.values()) / sum(m.numel() for m in masks.masks.values())
    s_f = 1 - sum(final.values()) / sum(m.numel() for m in masks.masks.values())
    assert sparsity == pytest.approx(s_f * (1 - (1 - 40 / 130) ** 3), abs=0.01)  # the paper's formula
    records.update(train_steps(model, masks, method, 60, T))
    assert sorted(records)[-2:] == [140, 150]  # one last prune lands exactly on t0 + n dt
    assert masks.target_nnz == final and {n: masks.nnz(n) for n in masks} == final
    for t, rec in records.items():
        assert rec["grown"] == {n: 0 for n in masks}


def test_gmp_reaches_erk_targets_and_refuses_a_sparse_start():
    model, masks, method, _ = build("gmp", density=0.3, total_steps=50, distribution="erk", update_every=5)
    train_steps(model, masks, method, 0, 50)
    erk = MaskRegistry(tiny_model(), 0.3, "erk")
    assert masks.target_nnz == erk.target_nnz
    model = tiny_model()
    sparse = MaskRegistry(model, 0.3)
    with pytest.raises(UserError, match="density 1.0"):
        get_method("gmp")(sparse, 50, TrainConfig(method="gmp"), torch.Generator())


def test_config_rejects_bad_method_settings():
    for bad in ({"death_rate": 1.2}, {"update_every": -1}, {"stop_fraction": 0.0},
                {"gmp_start": 0.8, "gmp_end": 0.5}):
        with pytest.raises(UserError):
            TrainConfig(**bad)


# -- determinism and exact resume -----------------------------------------------------------------

DYNAMIC = ["selfish", "set", "rigl", "snfs", "dsr", "gmp"]


@pytest.mark.parametrize("name", DYNAMIC)
def test_same_seed_same_topology(name):
    runs = []
    for seed in (3, 3, 4):
        model, masks, method, _ = build(name, total_steps=30, epochs=3, update_every=5, seed=seed)
        recs = train_steps(model, masks, method, 0, 30)
        runs.append(({n: m.clone() for n, m in masks.masks.items()}, recs))
    assert runs[0][1] == runs[1][1] and all(torch.equal(runs[0][0][n], runs[1][0][n]) for n in runs[0][0])
    assert any(not torch.equal(runs[0][0][n], runs[2][0][n]) for n in runs[0][0])


@pytest.mark.parametrize("name", DYNAMIC)
def test_state_dict_round_trip_gives_identical_updates(name, tmp_path):
    kw = dict(total_steps=40, epochs=4, update_every=5)
    model, masks, method, rng = build(name, **kw)
    train_steps(model, masks, method, 0, 17)
    save_checkpoint(tmp_path, {  # through the real checkpoint format: tensors split out, JSON for the rest
        "weights": dict(model.named_parameters()), "masks": masks.state_dict(), "method": method.state_dict(),
        "topology": rng.get_state(),
    })
    expected = train_steps(model, masks, method, 17, 40)
    assert expected

    ckpt = load_checkpoint(tmp_path)
    model2, masks2, method2, rng2 = build(name, seed=9, **kw)  # different seed: everything must come back
    with torch.no_grad():
        for n, p in model2.named_parameters():
            p.copy_(ckpt["weights"][n])
    masks2.load_state_dict(ckpt["masks"])
    method2.load_state_dict(ckpt["method"])
    rng2.set_state(ckpt["topology"])
    assert train_steps(model2, masks2, method2, 17, 40) == expected
    assert all(torch.equal(masks.masks[n], masks2.masks[n]) for n in masks)
    assert masks.target_nnz == masks2.target_nnz


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", DYNAMIC)
def test_cuda_masks_give_the_same_update_as_cpu(name):
    """Same weights, gradients, masks and generator state: the update is identical on CUDA (the random
    draws happen on the CPU generator, ties break by index on both)."""
    kw = dict(total_steps=40, epochs=4, update_every=5)
    model, masks, method, rng = build(name, **kw)
    train_steps(model, masks, method, 0, 9)
    model2, masks2, method2, rng2 = build(name, **kw)
    model2.cuda()
    masks2 = MaskRegistry(model2, 1.0 if method2.initial_density_one else 0.3, "uniform", rng2, arch="lstm")
    method2 = get_method(name)(masks2, 40, method2.config, rng2)
    with torch.no_grad():
        for (_, p), (_, p2) in zip(model.named_parameters(), model2.named_parameters()):
            p2.copy_(p)
    masks2.load_state_dict({n: m.clone() for n, m in masks.state_dict().items()})  # state_dict aliases on CPU
    method2.load_state_dict(method.state_dict())
    rng2.set_state(rng.get_state())
    for mdl in (model, model2):
        for p in mdl.parameters():
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(p.device)
    step = next(s for s in range(10, 40) if method.is_update_step(s))
    recs = []
    for ms, me in ((masks, method), (masks2, method2)):
        me.before_step(step - 1)
        ms.mask_grads_()
        recs.append(me.after_step(step))
        ms.check()
    assert recs[0] is not None and recs[0] == recs[1]
    assert all(torch.equal(masks.masks[n], masks2.masks[n].cpu()) for n in masks)


# -- end to end -----------------------------------------------------------------------------------

def test_selfish_through_the_cli_logs_fixed_nnz_and_drifting_gates(data_dir, tmp_path):
    from selfish_deploy.training.cli import main

    out = tmp_path / "run"
    argv = ["--corpus", "ptb-tiny", "--data-dir", str(data_dir), "--method", "selfish", "--epochs", "2",
            "--hidden", "16", "--emb", "16", "--update-every", "20", "--density", "0.3", "--optimizer", "sgd",
            "--seed", "3", "--log-interval", "1000", "--out", str(out)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    topo = [r for r in records if r["event"] == "topology"]
    total = next(r for r in records if r["event"] == "test")["steps"]
    assert [r["step"] for r in topo] == list(range(20, total, 20))
    numel = {k[len("mask."):]: v.numel() for k, v in load_file(str(out / "model.safetensors")).items()
             if k.startswith("mask.")}
    nnz0 = {n: round(r * numel[n]) for n, r in topo[0]["density"].items()}
    assert nnz0 == {n: round(0.3 * numel[n]) for n in numel}
    for r in topo:
        assert RECORD_KEYS | {"event", "epoch", "step"} <= set(r)  # the trainer may add its own keys
        assert {n: round(d * numel[n]) for n, d in r["density"].items()} == nnz0  # nnz fixed per tensor
        assert r["removed"] == r["grown"]
        assert r["death_rate"] == pytest.approx(topology.cosine_death_rate(r["step"], total, 0.8, 0.005))
    gates = [r["gates"]["rnns.0.weight_hh_l0"] for r in topo]
    assert len(gates[0]) == 4
    assert max(abs(a - b) for a, b in zip(gates[0], gates[-1])) > 0.005  # per-gate densities drift


def test_per_epoch_updates_follow_the_epochs_the_loop_announces():
    """Variable-length BPTT: epochs of 14 steps where total_steps counted 10 (4 epochs: 40). Every epoch's end
    but the last updates, also past total_steps (epoch 3 ends at step 42), where a check on total_steps alone
    skipped it; RigL keeps the gradient of each epoch's real last batch."""
    model, masks, method, _ = build("selfish", total_steps=40, epochs=4)
    assert method.at_epoch_end(42) is None  # no epoch announced: epochs of total_steps / epochs steps
    updated = []
    for epoch, end in enumerate((14, 28, 42, 56), 1):
        method.begin_epoch(end, last=epoch == 4)
        if method.at_epoch_end(end) is not None:
            updated.append(epoch)
        masks.check()
    assert updated == [1, 2, 3]

    model, masks, rigl, _ = build("rigl", total_steps=40, epochs=4, update_every=0, stop_fraction=1.0)
    rigl.begin_epoch(14, last=False)
    backward_on_step(model, 9)
    rigl.before_step(9)  # step 10: a fixed-window epoch end, not this epoch's
    assert rigl.grad_scores is None
    rigl.before_step(13)  # the batch that ends the epoch at step 14
    assert rigl.grad_scores is not None and rigl.at_epoch_end(14) is not None
    rigl.begin_epoch(56, last=True)
    rigl.grad_scores = None
    rigl.before_step(55)
    assert rigl.grad_scores is None and rigl.at_epoch_end(56) is None  # nothing after the last step
