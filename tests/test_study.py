"""The sparsity study (issue 5): data, graph -> mask exactness, exact pruning, statistics, both subcommands."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch

from selfish_deploy.families.stacked import CELLS as ARCHS, GATES
from selfish_deploy.training.study import analysis, graphs, reber
from selfish_deploy.training.study.classifier import EMBEDDING, Classifier, install_masks, stacked
from selfish_deploy.training.study.cli import main
from selfish_deploy.training.study.prune import REGIMES, magnitude_masks, prune_, regime_tensors
from selfish_deploy.training.study.prune_study import holds_up_to, summarise
from selfish_deploy.training.study.results import read_csv


# --- data ------------------------------------------------------------------------------------------------------

def test_automaton_known_strings_and_counts():
    for s in ("BTXSE", "BPVVE", "BTSSXXTVVE", "BPTVPXVPXTVPXTTTTTTVPSE"):
        assert reber.accepts(s)
    for s in ("BTXS", "TXSE", "BTXSEE", "BTXXE", "BPVPE", "", "BAE"):
        assert not reber.accepts(s)
    # Exactly two strings of 5 letters (BTXSE, BPVVE) and seven of 8 letters (enumerated by hand and by brute force).
    assert reber.completions(0, 5) == 2
    assert reber.completions(0, 8) == 7
    assert reber.completions(0, 4) == 0


def test_generator_validity_balance_and_lengths():
    data = reber.generate(2000, 11, 53, seed=3)
    assert len(data.strings) == 2000 and sum(data.labels) == 1000  # exactly 50/50
    for s, y in zip(data.strings, data.labels):
        assert reber.accepts(s) == bool(y), s
        assert 11 <= len(s) <= 53 and s[0] == "B" and s[-1] == "E"
        assert set(s) <= set(reber.ALPHABET)
    lengths = {y: np.array([len(s) for s, lab in zip(data.strings, data.labels) if lab == y]) for y in (0, 1)}
    assert lengths[1].min() == 11 and lengths[1].max() == 53  # uniform lengths reach both ends
    assert abs(lengths[0].mean() - lengths[1].mean()) < 2.0 and abs(lengths[1].mean() - 32) < 2.0
    invalid = [s for s, y in zip(data.strings, data.labels) if not y]
    reber_only = [s for s in invalid if set(s) <= set(reber.REBER_LETTERS)]
    assert 0.2 < len(reber_only) / len(invalid) < 0.8  # hard negatives (Reber letters only) are common
    assert reber.generate(2000, 11, 53, seed=3) == data
    assert reber.generate(2000, 11, 53, seed=4) != data


def test_generator_bad_lengths_are_user_errors():
    from selfish_deploy.errors import UserError

    with pytest.raises(UserError):
        reber.generate(10, 4, 20, 0)
    with pytest.raises(UserError):
        reber.generate(10, 30, 20, 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_last_real_step_ignores_padding(arch):
    torch.manual_seed(0)
    model = Classifier(stacked(arch, 5, 7, 2)).eval()
    strings = ["BTXSE", "BPTTTVPXVPXTTTVVE", "BTSXXTVVE"]
    tokens, lengths = reber.encode(strings)
    with torch.no_grad():
        together = model(tokens, lengths)
        alone = torch.cat([model(*reber.encode([s])) for s in strings])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


# --- graphs -> masks -------------------------------------------------------------------------------------------

def test_generators_pinned_edge_lists():
    """Our own seeded generators: the same edges under any networkx version (numpy's random() stream only)."""
    rng = np.random.default_rng(0)
    assert sorted(graphs.barabasi_albert(8, 2, rng)) == PINNED_BA
    assert sorted(graphs.watts_strogatz(8, 4, 0.5, np.random.default_rng(1))) == PINNED_WS
    assert sorted(graphs.erdos_renyi(6, 0.5, np.random.default_rng(2))) == PINNED_ER


PINNED_BA = [(0, 2), (0, 4), (0, 6), (0, 7), (1, 2), (1, 3), (2, 3), (2, 4), (2, 5), (3, 5), (4, 6), (4, 7)]
PINNED_WS = [(0, 1), (0, 5), (0, 6), (0, 7), (1, 2), (1, 3), (1, 4), (1, 5), (1, 7), (2, 3), (2, 5), (2, 7), (3, 5),
             (4, 5), (4, 6), (5, 6)]
PINNED_ER = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 4), (1, 5), (2, 5), (3, 4), (4, 5)]


@pytest.mark.parametrize("gen", graphs.GENERATORS)
def test_generated_graphs_are_connected_and_sized(gen):
    for i in range(5):
        g = graphs.draw(gen, i, seed=11, n_min=10, n_max=30)
        assert 10 <= g.n <= 30
        und = nx.Graph(list(g.edges))
        und.add_nodes_from(range(g.n))
        assert nx.is_connected(und)
        if gen == "barabasi_albert":
            m = g.n // 10
            assert len(g.edges) == m + (g.n - m - 1) * m
        if gen == "watts_strogatz":
            assert len(g.edges) == g.n * ((g.n // 5) // 2)  # k // 2 neighbours per side; rewiring keeps the count
        assert graphs.draw(gen, i, seed=11, n_min=10, n_max=30) == g


def _realised(model, g, net, k, gate, which):
    """(source node, target node) pairs with a non-zero weight in one gate block of layer k (-1: embedding)."""
    w = getattr(model.rnns[k], f"weight_{which}_l0").detach()
    h = model.wiring.sizes[k]
    units = g.units(k)
    cols = net.columns[k] if which == "ih" else units
    return {(cols[c], units[r]) for r, c in torch.nonzero(w[gate * h:(gate + 1) * h]).tolist()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("gen", graphs.GENERATORS)
def test_graph_masks_realise_exactly_the_edges(arch, gen):
    g = graphs.draw(gen, 0, seed=5, n_min=12, n_max=25)
    net = graphs.to_network(g, arch)
    model = Classifier(net.wiring)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)  # every weight alive until the masks say otherwise
    masks = install_masks(model, net.masks)
    masks.check()
    dag = nx.DiGraph(list(g.edges))
    assert g.depth - 1 == nx.dag_longest_path_length(dag)
    assert all(g.layer_of[u] < g.layer_of[v] for u, v in g.edges)
    assert set(g.units(0)) == set(g.sources)
    edges = set()
    for k in range(g.depth):
        per_gate = [_realised(model, g, net, k, gate, "ih") for gate in range(len(GATES[arch]))]
        assert all(s == per_gate[0] for s in per_gate)  # every gate has the same connections
        rec = [_realised(model, g, net, k, gate, "hh") for gate in range(len(GATES[arch]))]
        assert all(s == {(v, v) for v in g.units(k)} for s in rec)  # recurrence: self-loops only
        if k == 0:
            assert net.wiring.inputs[0] == (EMBEDDING,)
            assert per_gate[0] == {(-1, v) for v in g.units(0)}  # sources read the embedding
        else:
            edges |= per_gate[0]
    assert edges == set(g.edges)
    readout_nodes = [v for k in net.wiring.readout for v in g.units(k)]
    head_alive = {readout_nodes[c] for c in torch.nonzero(model.head.weight.detach()[0]).flatten().tolist()}
    assert head_alive == set(g.sinks)
    assert net.wiring.emb == len(g.sources)


def test_graph_network_recurrent_modes():
    g = graphs.draw("erdos_renyi", 1, seed=0, n_min=10, n_max=14)
    for mode, expect in (("dense", lambda h: h * h), ("none", lambda h: 0), ("self", lambda h: h)):
        net = graphs.to_network(g, "gru", recurrent=mode)
        for k in range(g.depth):
            h = len(g.units(k))
            assert int(net.masks[f"rnns.{k}.weight_hh_l0"].sum()) == 3 * expect(h)


# --- pruning ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("regime", REGIMES)
def test_pruning_hits_the_requested_count_exactly(regime):
    torch.manual_seed(0)
    model = Classifier(stacked("lstm", 4, 6, 2))
    with torch.no_grad():  # heavy ties: magnitudes on a 0.1 grid
        for p in model.parameters():
            p.copy_(torch.round(p * 10) / 10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for fraction in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(before[n])
        masks = install_masks(model)
        names = regime_tensors(masks, regime)
        assert names and all(n.startswith("rnns.") for n in names)
        assert all(any(kind in n for kind in REGIMES[regime]) for n in names)
        total = sum(masks.masks[n].numel() for n in names)
        counts = prune_(masks, regime, fraction)
        assert counts["weights"] == total and counts["nnz"] == total - round(fraction * total)
        masks.check()
        for n in masks:  # nothing outside the regime is touched
            if n not in names:
                assert bool(masks.masks[n].all())
        kept = torch.cat([before[n].abs()[masks.masks[n]] for n in names])
        dropped = torch.cat([before[n].abs()[~masks.masks[n]] for n in names])
        if len(kept) and len(dropped):
            assert float(dropped.max()) <= float(kept.min())  # the smallest magnitudes go


def test_pruning_ties_break_by_position():
    model = Classifier(stacked("rnn_tanh", 2, 3, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)  # all tied
    masks = install_masks(model)
    names = regime_tensors(masks, "both")
    assert names == ["rnns.0.weight_ih_l0", "rnns.0.weight_hh_l0", "rnns.1.weight_ih_l0", "rnns.1.weight_hh_l0"]
    new = magnitude_masks(masks, names, 0.5)
    flat = torch.cat([new[n].flatten() for n in names])
    n_pruned = round(0.5 * flat.numel())
    assert not flat[:n_pruned].any() and flat[n_pruned:].all()  # earlier weights pruned first


def test_holds_up_to():
    levels = [(10, 0.95), (20, 0.94), (30, 0.90), (40, 0.95), (50, 0.5)]
    assert holds_up_to(levels, 0.95, 0.02) == 20  # stops at the first level out of tolerance
    assert holds_up_to(levels, 0.95, 0.06) == 40
    assert holds_up_to(levels, 0.99, 0.02) == 0


def test_prune_summary_known_answer():
    from selfish_deploy.training.study.config import PruneConfig

    cfg = PruneConfig(cells=("gru",), regimes=("both",), levels=(10, 20, 30, 40), retrain_epochs=2, tolerance=0.02)
    acc = {10: (0.95, 0.90, 0.96), 20: (0.80, 0.95, 0.95), 30: (0.70, 0.80, 0.94), 40: (0.99, 0.5, 0.5)}
    rows = [{"cell": "gru", "regime": "both", "pruned_pct": p, "base_acc": 0.96, "epoch": e, "test_acc": a}
            for p, accs in acc.items() for e, a in enumerate(accs)]
    (s,) = summarise(rows, cfg)
    assert s["holds_no_retrain"] == 10  # 20% drops to 0.80 right after pruning
    assert s["recovers_one_epoch"] == 20  # 30% needs two epochs
    assert s["epochs_to_recover"] == "0 1 2 0"


# --- statistics ------------------------------------------------------------------------------------------------

def test_correlations_known_answers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    rows = analysis.correlations({"linear": x, "cubic": x ** 3, "const": np.ones(200), "noise": rng.normal(size=200)},
                                 2 * x + 1)
    by = {r["property"]: r for r in rows}
    assert by["linear"]["pearson_r"] == pytest.approx(1.0) and by["linear"]["spearman_r"] == pytest.approx(1.0)
    assert by["cubic"]["spearman_r"] == pytest.approx(1.0) and by["cubic"]["pearson_r"] < 0.95
    assert by["cubic"]["pearson_r"] == pytest.approx(np.corrcoef(x ** 3, x)[0, 1])
    assert math.isnan(by["const"]["pearson_r"]) and math.isnan(by["const"]["spearman_r"])
    assert abs(by["noise"]["pearson_r"]) < 0.2 and by["noise"]["pearson_p"] > 0.01
    assert rows[0]["property"] in ("linear", "cubic") and rows[-1]["property"] == "const"


def test_ridge_and_kfold_r2_known_answers():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4))
    w = np.array([1.0, -2.0, 0.5, 0.0])
    y = x @ w + 3.0
    w_hat, b_hat = analysis.ridge_fit(x, y, alpha=0.0)
    np.testing.assert_allclose(w_hat, w, atol=1e-9)
    assert b_hat == pytest.approx(3.0)
    shrunk, _ = analysis.ridge_fit(x, y, alpha=100.0)
    assert np.linalg.norm(shrunk) < np.linalg.norm(w)
    noisy = y + 0.1 * rng.normal(size=120)
    res = analysis.kfold_r2(np.column_stack([x, np.ones(120)]), noisy, k=5, alpha=0.0)  # constant column dropped
    assert res["r2"] > 0.99 and res["r2_fold_mean"] > 0.99
    null = analysis.kfold_r2(x, rng.normal(size=120), k=5, alpha=1.0)
    assert null["r2"] < 0.1
    assert analysis.kfold_r2(x, noisy, k=5, seed=3) == analysis.kfold_r2(x, noisy, k=5, seed=3)
    assert math.isnan(analysis.kfold_r2(x[:6], noisy[:6], k=5)["r2"])


def test_loo_alpha_matches_brute_force_and_helps_when_features_outnumber_data():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(15, 6))
    y = x[:, 0] + 0.5 * rng.normal(size=15)
    brute = {}
    for alpha in analysis.ALPHA_GRID:  # leave-one-out by refitting
        errs = [y[i] - (x[i] @ w + b) for i in range(15)
                for w, b in [analysis.ridge_fit(np.delete(x, i, 0), np.delete(y, i), alpha)]]
        brute[alpha] = np.mean(np.square(errs))
    assert analysis.loo_alpha(x, y) == min(brute, key=brute.get)
    # 30 points, 24 mostly useless features: least squares over-fits, the chosen penalty does not.
    x = rng.normal(size=(30, 24))
    y = x[:, 0] + 0.5 * rng.normal(size=30)
    auto, ols = analysis.kfold_r2(x, y, k=5), analysis.kfold_r2(x, y, k=5, alpha=0.0)
    assert auto["r2"] > 0.1 > ols["r2"] and auto["alpha_used"] > 0


# --- end to end ------------------------------------------------------------------------------------------------

TINY = ["--strings", "160", "--min-len", "11", "--max-len", "20", "--epochs", "1", "--threads", "1"]


def test_prune_subcommand_end_to_end(tmp_path, capsys):
    out = tmp_path / "prune"
    rc = main(["prune", *TINY, "--cell", "gru", "rnn_relu", "--hidden", "6", "--emb", "4", "--layers", "2",
               "--levels", "30", "100", "--retrain-epochs", "1", "--out", str(out)])
    assert rc == 0
    rows = read_csv(out / "prune.csv")
    assert list(rows[0]) == ["cell", "regime", "pruned_pct", "weights", "nnz", "density", "base_acc", "epoch",
                             "train_loss", "test_acc"]
    assert len(rows) == 2 * 3 * 2 * 2  # cells x regimes x levels x (after pruning + 1 retraining epoch)
    for r in rows:
        pct, weights, nnz = int(r["pruned_pct"]), int(r["weights"]), int(r["nnz"])
        assert nnz == weights - round(pct / 100 * weights)
        assert float(r["density"]) == pytest.approx(nnz / weights)
        assert 0.0 <= float(r["test_acc"]) <= 1.0 and r["epoch"] in ("0", "1")
        assert (r["train_loss"] == "") == (r["epoch"] == "0")
    sizes = {(r["cell"], r["regime"]): int(r["weights"]) for r in rows}
    assert sizes[("gru", "both")] == sizes[("gru", "input")] + sizes[("gru", "recurrent")] == 3 * 6 * (4 + 6 + 6 + 6)
    assert {r["cell"] for r in read_csv(out / "prune_base.csv")} == {"gru", "rnn_relu"}
    assert len(read_csv(out / "prune_summary.csv")) == 6
    assert "holds@0ep" in capsys.readouterr().out
    summary = read_csv(out / "prune_summary.csv")
    for srow in summary:
        assert int(srow["recovers_one_epoch"]) >= int(srow["holds_no_retrain"])  # epoch 0 counts too
    for png in ("prune_accuracy.png", "prune_recovery.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_graphs_subcommand_end_to_end(tmp_path):
    out = tmp_path / "graphs"
    rc = main(["graphs", *TINY, "--cell", "lstm", "--graphs", "2", "--min-nodes", "10", "--max-nodes", "14",
               "--out", str(out)])
    assert rc == 0
    rows = read_csv(out / "graphs.csv")
    assert len(rows) == 3 * 2 and {r["generator"] for r in rows} == set(graphs.GENERATORS)
    from selfish_deploy.training.study.properties import PROPERTIES

    for r in rows:
        assert set(PROPERTIES) <= set(r)
        assert 10 <= float(r["nodes"]) <= 14 and 0.0 <= float(r["test_acc"]) <= 1.0
        assert float(r["sources"]) >= 1 and float(r["sinks"]) >= 1 and float(r["diameter"]) >= 1
        assert int(r["emb"]) == int(float(r["sources"]))
    corr = read_csv(out / "graphs_correlations.csv")
    assert {c["generator"] for c in corr} == {"all", *graphs.GENERATORS}
    assert all(c["pearson_r"] == "" or -1.0 - 1e-9 <= float(c["pearson_r"]) <= 1.0 + 1e-9 for c in corr)
    reg = read_csv(out / "graphs_regression.csv")
    assert len(reg) == 4 and all(int(r["n"]) in (2, 6) for r in reg)
    assert (out / "plots" / "graphs_correlation.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["prune", "--levels", "150", "--out", str(tmp_path)]) == 2
    assert main(["graphs", "--min-len", "3", "--out", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
