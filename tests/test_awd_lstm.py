"""AWD-LSTM: weight drop under exact masks, locked and embedding dropout, AR/TAR, variable BPTT, eval = LSTM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfish_deploy.families.awd_lstm import AWDLSTMTrunk, embedded_dropout, locked_dropout
from selfish_deploy.masks import MaskRegistry
from selfish_deploy.training.regularization import (VariableBPTT, activation_regularization, add_ar_tar,
                                                    scaled_lr, temporal_activation_regularization)

SIZES = [(6, 10), (10, 10), (10, 6)]  # 3 layers, the last one as wide as the (tied) embedding


def make_trunk(dropout=0.0, dropouti=0.0, dropouth=0.0, wdrop=0.0, sizes=SIZES, seed=0) -> AWDLSTMTrunk:
    torch.manual_seed(seed)
    return AWDLSTMTrunk(sizes, dropout=dropout, dropouti=dropouti, dropouth=dropouth, wdrop=wdrop)


def zero_state(sizes, batch):
    """(h, c) per layer, each (B, W): the families' state layout."""
    return [(torch.zeros(batch, o), torch.zeros(batch, o)) for _, o in sizes]


def plain_stack(trunk: AWDLSTMTrunk, overrides: dict | None = None) -> nn.ModuleList:
    """Separate nn.LSTMs holding copies of ``trunk``'s weights (``overrides``: name -> tensor)."""
    rnns = nn.ModuleList(nn.LSTM(r.input_size, r.hidden_size) for r in trunk)
    with torch.no_grad():
        for (n, p), (_, q) in zip(trunk.named_parameters(), rnns.named_parameters()):
            q.copy_((overrides or {}).get(n, p))
    return rnns


def run_stack(rnns, x, state):
    for k, rnn in enumerate(rnns):
        x, _ = rnn(x, (state[k][0].unsqueeze(0), state[k][1].unsqueeze(0)))
    return x


def test_eval_forward_is_a_plain_stacked_lstm():
    trunk = make_trunk(dropout=0.4, dropouti=0.4, dropouth=0.25, wdrop=0.5).eval()
    x = torch.randn(7, 3, 6)
    out, state = trunk(x, zero_state(SIZES, 3))
    assert torch.equal(out, run_stack(plain_stack(trunk), x, zero_state(SIZES, 3)))
    assert [s[0].shape for s in state] == [(3, 10), (3, 10), (3, 6)]
    assert trunk.ar_input is None and trunk.tar_input is None  # nothing held in eval mode


def test_weight_drop_keeps_the_mask_exact_and_restores_dropped_weights():
    p = 0.5
    trunk = make_trunk(wdrop=p).train()
    masks = MaskRegistry(trunk, 0.4, generator=torch.Generator().manual_seed(1), arch="lstm")
    nnz = {n: masks.nnz(n) for n in masks}
    name = "0.weight_hh_l0"
    w = trunk[0].weight_hh_l0
    before = w.detach().clone()
    x, state = torch.randn(5, 4, 6), zero_state(SIZES, 4)

    torch.manual_seed(123)  # no locked dropout here: layer 0's weight drop is the first draw
    out, _ = trunk(x, state)
    torch.manual_seed(123)
    keep = F.dropout(torch.ones_like(w), p, True) != 0  # the same Bernoulli draws: what this forward kept
    assert torch.equal(w.detach(), before)  # the forward never writes into the parameter

    out.pow(2).sum().backward()
    # The gradient reaches the parameter through the dropout: 0 where this forward dropped a weight.
    assert bool((w.grad[~keep] == 0).all())
    assert bool((w.grad[keep] != 0).float().mean() > 0.9)

    # The trainer's order: mask the gradient, step, re-apply the masks.
    opt = torch.optim.SGD(trunk.parameters(), lr=0.5)
    masks.mask_grads_()
    opt.step()
    masks.apply_()
    masks.check()  # nnz unchanged, nothing alive off the mask
    assert {n: masks.nnz(n) for n in masks} == nnz
    alive = masks.masks[name]
    restored = alive & ~keep  # alive but dropped in this forward: back, with its value (gradient 0)
    assert int(restored.sum()) > 0 and torch.equal(w.detach()[restored], before[restored])
    assert bool((w.detach()[restored] != 0).all())
    moved = alive & keep
    assert bool((w.detach()[moved] != before[moved]).float().mean() > 0.9)


def test_weight_drop_gradient_is_the_dropped_copys_scaled():
    p = 0.3
    trunk = make_trunk(wdrop=p, sizes=[(6, 8)]).train()
    w = trunk[0].weight_hh_l0
    x, state = torch.randn(6, 2, 6), zero_state([(6, 8)], 2)
    torch.manual_seed(5)
    out, _ = trunk(x, state)
    out.sum().backward()
    torch.manual_seed(5)
    keep = (F.dropout(torch.ones_like(w), p, True) != 0).float()
    ref = plain_stack(trunk, {"0.weight_hh_l0": w.detach() * keep / (1 - p)})[0]  # a plain nn.LSTM
    ref_out, _ = ref(x, tuple(t.unsqueeze(0) for t in state[0]))
    assert torch.allclose(out, ref_out, atol=1e-6)  # the forward ran with the dropped, rescaled copy
    ref_out.sum().backward()
    assert torch.allclose(w.grad, ref.weight_hh_l0.grad * keep / (1 - p), atol=1e-6)
    assert torch.allclose(trunk[0].weight_ih_l0.grad, ref.weight_ih_l0.grad, atol=1e-6)


def test_locked_dropout_shares_one_mask_over_time():
    torch.manual_seed(0)
    x = torch.ones(9, 4, 50)
    y = locked_dropout(x, 0.5, training=True)
    assert torch.equal(y, y[:1].expand_as(y))  # the same mask at every time step
    assert set(y.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1/(1-p)
    assert 0.3 < float((y[0] == 0).float().mean()) < 0.7  # but not the same for every unit
    assert locked_dropout(x, 0.5, training=False) is x and locked_dropout(x, 0.0, training=True) is x


def test_trunk_locked_dropout_masks_are_shared_over_time():
    trunk = make_trunk(dropout=0.5, sizes=[(6, 8)]).train()
    out, _ = trunk(torch.randn(7, 3, 6), zero_state([(6, 8)], 3))
    zero = (out == 0)
    assert torch.equal(zero, zero[:1].expand_as(zero))  # one output mask over time
    kept = ~zero
    assert torch.allclose(out[kept], (2 * trunk.tar_input)[kept])  # scaled 1/(1-p) where kept


def test_embedding_dropout_drops_whole_rows_and_rescales():
    torch.manual_seed(0)
    weight = torch.randn(40, 5, requires_grad=True)
    tokens = torch.randint(0, 40, (12, 6))
    p = 0.4
    x = embedded_dropout(weight, tokens, p, training=True)
    rows = x.view(-1, 5)
    flat = tokens.view(-1)
    zero = (rows == 0).all(1)
    assert bool(((rows == 0).any(1) == zero).all())  # a row is dropped whole or not at all
    assert torch.allclose(rows[~zero], weight.detach()[flat[~zero]] / (1 - p))
    # one decision per word: every occurrence of a word is dropped or every one is kept
    dropped_words = set(flat[zero].tolist())
    assert dropped_words and not dropped_words & set(flat[~zero].tolist())
    x.sum().backward()
    assert bool((weight.grad[list(dropped_words)] == 0).all())  # as the masked matrix: no gradient
    plain = F.embedding(tokens, weight)
    assert torch.equal(embedded_dropout(weight, tokens, p, training=False), plain)
    assert torch.equal(embedded_dropout(weight, tokens, 0.0, training=True), plain)


def test_ar_and_tar_equal_a_hand_computation():
    torch.manual_seed(0)
    raw = torch.randn(4, 2, 3)
    dropped = raw * torch.tensor([0.0, 2.0, 2.0]).view(1, 1, 3)
    ar_hand = 2.0 * sum(float(v) ** 2 for v in dropped.flatten()) / dropped.numel()
    diffs = [float(raw[t + 1, b, j] - raw[t, b, j]) for t in range(3) for b in range(2) for j in range(3)]
    tar_hand = 1.0 * sum(d * d for d in diffs) / len(diffs)
    assert activation_regularization(dropped, 2.0).item() == pytest.approx(ar_hand, rel=1e-6)
    assert temporal_activation_regularization(raw, 1.0).item() == pytest.approx(tar_hand, rel=1e-6)
    assert temporal_activation_regularization(raw[:1], 1.0).item() == 0.0  # a one-step window


def test_add_ar_tar_reads_the_trunks_last_layer():
    trunk = make_trunk(dropout=0.4, dropouti=0.3, dropouth=0.2, wdrop=0.5).train()
    out, _ = trunk(torch.randn(6, 3, 6), zero_state(SIZES, 3))
    assert trunk.ar_input is out  # AR on the dropped output (awd-lstm-lm's dropped_rnn_hs[-1])
    raw = trunk.tar_input  # TAR on the raw one (rnn_hs[-1])
    assert raw.shape == out.shape and not torch.equal(raw, out)
    base = out.sum()
    total = add_ar_tar(base, trunk, alpha=2.0, beta=1.0)
    hand = base + 2.0 * (out ** 2).mean() + 1.0 * ((raw[1:] - raw[:-1]) ** 2).mean()
    assert total.item() == pytest.approx(hand.item(), rel=1e-6)
    assert add_ar_tar(base, trunk, alpha=0.0, beta=0.0) is base
    trunk.eval()
    trunk(torch.randn(6, 3, 6), zero_state(SIZES, 3))
    with pytest.raises(Exception, match="alpha"):
        add_ar_tar(base, trunk, alpha=2.0, beta=0.0)  # eval mode leaves nothing to regularize


def test_variable_bptt_draws_as_awd_lstm_main():
    bptt, seed = 70, 141
    sampler = VariableBPTT(bptt, seed)
    np.random.seed(seed)  # the authors' loop, verbatim, on numpy's global RNG
    theirs = []
    for _ in range(500):
        b = bptt if np.random.random() < 0.95 else bptt / 2.
        theirs.append(max(5, int(np.random.normal(b, 5))))
    ours = [sampler.draw() for _ in range(500)]
    assert ours == theirs
    assert min(ours) >= 5 and any(s < 50 for s in ours)  # the bptt/2 branch is taken sometimes
    capped = VariableBPTT(bptt, seed, max_seq_len_delta=2)
    assert max(capped.draw() for _ in range(500)) == bptt + 2


def test_variable_bptt_windows_cover_the_split_and_resume_exactly():
    sampler = VariableBPTT(10, 3)
    wins = sampler.windows(101)
    starts = [i for i, _ in wins]
    assert starts[0] == 0 and all(b == a + n for (a, n), b in zip(wins, starts[1:]))
    assert starts[-1] < 99 <= starts[-1] + wins[-1][1]  # as `while i < rows - 1 - 1`
    state = sampler.state_dict()
    nxt = sampler.windows(101)
    other = VariableBPTT(10, 999)
    other.load_state_dict(state)
    assert other.windows(101) == nxt


def test_learning_rate_is_rescaled_for_the_step_only():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=30.0)
    w.grad = torch.tensor([0.5, 0.25])
    with scaled_lr(opt, seq_len=63, bptt=70):
        assert opt.param_groups[0]["lr"] == 30.0 * 63 / 70
        opt.step()
    assert opt.param_groups[0]["lr"] == 30.0
    assert torch.allclose(w.detach(), torch.tensor([1.0 - 27.0 * 0.5, -2.0 - 27.0 * 0.25]))


# --- through the trainer, the export, the runtime, the server and ONNX (ptb-tiny) ---------------------------

AWD_ARGS = ["--corpus", "ptb-tiny", "--arch", "awd_lstm", "--layers", "3", "--hidden", "24", "--emb", "16",
            "--method", "selfish", "--density", "0.4", "--batch-size", "10", "--bptt", "20", "--lr", "30",
            "--eval-batch-size", "20", "--test-batch-size", "20", "--max-batches", "6", "--seed", "3",
            "--log-interval", "1000"]


def train(data_dir, out, *extra) -> int:
    from selfish_deploy.training.cli import main

    return main([*AWD_ARGS, "--data-dir", str(data_dir), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def awd_run(tmp_path_factory, data_dir):
    """Three epochs of a tiny sparse AWD-LSTM (every regularizer at the authors' PTB values): a topology update
    after the first, the switch to SNT-ASGD averaging after the second (no update then, as theirs)."""
    out = tmp_path_factory.mktemp("awd") / "run"
    assert train(data_dir, out, "--epochs", "3", "--asgd-after", "2") == 0
    return out


@pytest.fixture(scope="module")
def awd_export(tmp_path_factory, awd_run):
    from selfish_deploy.export.cli import main

    out = tmp_path_factory.mktemp("awd-export") / "export"
    assert main([str(awd_run), "--out", str(out), "--onnx"]) == 0
    return out


def test_run_config_holds_the_authors_ptb_values(awd_run):
    from selfish_deploy.rundir import load_run

    run = load_run(awd_run)
    assert run.model_config.arch == "awd_lstm"
    opts = run.model_config.options
    assert {k: opts[k] for k in ("dropouti", "dropouth", "dropoute", "wdrop", "alpha", "beta", "variable_bptt")} == {
        "dropouti": 0.4, "dropouth": 0.25, "dropoute": 0.1, "wdrop": 0.5, "alpha": 2.0, "beta": 1.0,
        "variable_bptt": True}
    events = [json.loads(line)["event"] for line in (awd_run / "metrics.jsonl").read_text().splitlines()]
    assert "topology" in events and "phase" in events  # a selfish update and the switch to averaging ran


def test_trained_weights_keep_exact_masks(awd_run):
    from selfish_deploy.rundir import load_run

    run = load_run(awd_run)
    start = json.loads((awd_run / "metrics.jsonl").read_text().splitlines()[0])
    assert set(run.masks) == {"encoder.weight", *(f"rnns.{k}.weight_{s}_l0" for k in range(3) for s in ("ih", "hh"))}
    for n, m in run.masks.items():
        assert m.float().mean().item() == pytest.approx(start["density"][n])  # nnz unchanged by training
        assert bool((run.weights[n][~m] == 0).all())  # nothing alive off the mask


def test_resume_with_variable_bptt_is_exact(data_dir, tmp_path, awd_run):
    """Stopped after epoch 1 and resumed, the run equals ``awd_run`` (trained straight through): the window
    sampler's state is in the checkpoint, and the topology update, the switch and the averaging follow."""
    from safetensors.torch import load_file

    from selfish_deploy.training.cli import main

    split = tmp_path / "split"
    assert train(data_dir, split, "--epochs", "3", "--asgd-after", "2", "--stop-after-epoch", "1") == 0
    assert main(["--resume", str(split)]) == 0
    records = [[{k: v for k, v in json.loads(line).items() if not k.endswith("time_s")}
                for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (awd_run, split)]
    assert records[0] == records[1]
    a, b = (load_file(str(d / "model.safetensors")) for d in (awd_run, split))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_uses_the_learning_rate_times_window_over_bptt(data_dir, tmp_path):
    """One plain SGD step (no dropout, AR/TAR off, dense, no clipping) equals w - lr * (L / bptt) * grad for the
    window length L the sampler draws first."""
    from selfish_deploy.data import batchify, load_corpus
    from selfish_deploy.model import ModelConfig, build_model
    from selfish_deploy.rundir import load_run

    out = tmp_path / "one"
    knobs = ["--dropout", "0", "--dropouti", "0", "--dropouth", "0", "--dropoute", "0", "--wdrop", "0",
             "--alpha", "0", "--beta", "0", "--method", "dense", "--optimizer", "sgd", "--clip", "1e9",
             "--epochs", "1", "--max-batches", "1"]
    assert train(data_dir, out, *knobs) == 0
    corpus = load_corpus("ptb-tiny", str(data_dir))
    data = batchify(corpus.train, 10)
    (start, length), = VariableBPTT(20, 3).windows(data.size(0))[:1]
    assert start == 0 and length != 20
    torch.manual_seed(3)  # the trainer's seed, then the same model construction
    cfg = load_run(out).model_config
    model = build_model(ModelConfig.from_dict(cfg.to_dict())).train()
    x, y = data[:length], data[1:length + 1]
    logp, _ = model(x, model.init_hidden(10))
    F.nll_loss(logp.view(-1, logp.size(-1)), y.reshape(-1)).backward()
    trained = load_run(out).weights
    for n, p in model.named_parameters():
        assert torch.equal(trained[n], p.detach().add(p.grad, alpha=-30.0 * length / 20)), n


@pytest.mark.parametrize("kernel_set", ["reference", "default"])
def test_family_sparse_trunk_equals_the_eval_forward(awd_run, awd_export, kernel_set):
    """The registry entry's sparse runtime trunk (the stacked LSTM's fused path) and the decoder's head, on the
    exported CSR tensors, give the eval forward's log-probabilities."""
    from selfish_deploy import kernels
    from selfish_deploy.csr import CSR
    from selfish_deploy.exportdir import load_export
    from selfish_deploy.families import get_decoder, get_family
    from selfish_deploy.rundir import load_run
    from selfish_deploy.runtime.state import State

    exported = load_export(awd_export)
    assert exported.sparse  # CSR matrices, so the sparse kernels run
    ops = kernels.reference if kernel_set == "reference" else kernels.kernels_for(torch.device("cpu"), 1)

    def matrix(name):
        w = exported.weight(name)
        return kernels.Matrix(csr=w, device="cpu") if isinstance(w, CSR) else kernels.Matrix(dense=w, device="cpu")

    def vector(name):
        return exported.dense[name].float().contiguous()

    cfg = exported.model_config
    family = get_family(cfg.arch)
    trunk = family.sparse_trunk(exported, matrix, vector, ops)
    head = get_decoder(cfg.decoder).sparse_head(exported, matrix, vector, ops)
    model = load_run(awd_run).build_model()
    tokens = torch.randint(0, cfg.vocab_size, (9, 3), generator=torch.Generator().manual_seed(0))
    x, state = trunk(tokens, State(family.init_state(cfg, 3)))
    logp = head(x, full=True)["logprobs"].view(9, 3, -1)
    with torch.no_grad():
        ref, ref_state = model(tokens, model.init_hidden(3))
    assert ((logp - ref).abs() / ref.abs()).max().item() < 1e-5
    h, c = list(state)[-1]
    assert torch.allclose(h, ref_state[-1][0], atol=1e-5) and torch.allclose(c, ref_state[-1][1], atol=1e-5)


def test_runtime_log_probabilities_equal_the_eval_forward(awd_run, awd_export):
    from selfish_deploy.rundir import load_run
    from selfish_deploy.runtime import SparseLM

    model = load_run(awd_run).build_model()
    tokens = torch.randint(0, model.config.vocab_size, (9, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = model(tokens, model.init_hidden(3))
    for backend in ("sparse", "dense"):
        lm = SparseLM.load(awd_export, backend=backend)
        logp, _ = lm.forward(tokens)
        rel = ((logp - ref).abs() / ref.abs()).max().item()
        assert rel < 1e-5, (backend, rel)


def test_served_scores_equal_the_eval_forward(awd_run, awd_export):
    from fastapi.testclient import TestClient

    from selfish_deploy.rundir import load_run
    from selfish_deploy.runtime import SparseLM
    from selfish_deploy.serving.app import create_app

    lm = SparseLM.load(awd_export)
    text = "the company said it expects higher sales"
    with TestClient(create_app(lm, "awd")) as client:
        r = client.post("/v1/score", json={"text": text})
        assert r.status_code == 200, r.text
        assert client.get("/health").json()["arch"] == "awd_lstm"
    model = load_run(awd_run).build_model()
    ids = lm.vocab.encode(text, add_eos=True)
    inputs = torch.tensor([lm.vocab.eos_id] + ids[:-1]).view(-1, 1)
    with torch.no_grad():
        logp, _ = model(inputs, model.init_hidden(1))
    ref = logp[:, 0].gather(1, torch.tensor(ids).view(-1, 1)).view(-1)
    assert torch.allclose(torch.tensor(r.json()["logprobs"]), ref, rtol=1e-5, atol=1e-6)


def test_onnx_export_equals_pytorch(awd_run, awd_export):
    from selfish_deploy.export.onnx_runner import OnnxLM
    from selfish_deploy.rundir import load_run

    model = load_run(awd_run).build_model()
    tokens = torch.randint(0, model.config.vocab_size, (7, 2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, ref_state = model(tokens, model.init_hidden(2))
    logp, state = OnnxLM.load(awd_export, threads=1).forward(tokens.t().numpy())  # [batch, seq]
    got = torch.from_numpy(logp).transpose(0, 1)  # (T, B, V)
    assert ((got - ref).abs() / ref.abs()).max().item() < 1e-5
    h, c = state[-1]
    assert torch.allclose(torch.from_numpy(c), ref_state[-1][1], atol=1e-5)


def test_ptb_recipe_is_awd_lstm_lms():
    from selfish_deploy.training.config import TrainConfig, load_recipe

    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **load_recipe("ptb-awd-lstm")})
    assert (cfg.arch, cfg.layers, cfg.hidden, cfg.emb, cfg.tie_weights, cfg.dropout) == ("awd_lstm", 3, 1150, 400,
                                                                                        True, 0.4)
    assert cfg.options == {"dropouti": 0.4, "dropouth": 0.25, "dropoute": 0.1, "wdrop": 0.5, "alpha": 2.0,
                           "beta": 1.0, "variable_bptt": True}
    assert (cfg.lr, cfg.clip, cfg.bptt, cfg.batch_size, cfg.weight_decay, cfg.seed, cfg.epochs) == (
        30.0, 0.25, 70, 20, 1.2e-6, 141, 500)
    assert (cfg.eval_batch_size, cfg.test_batch_size, cfg.nonmono, cfg.optimizer) == (10, 1, 5, "snt-asgd")
    assert (cfg.method, cfg.density, cfg.death_rate) == ("selfish", 0.45, None)
    from selfish_deploy.training.methods import METHODS
    assert METHODS["selfish"](None, 1, cfg, None).initial_death_rate == 0.5  # Selfish-RNN's ONLSTM/ command


@pytest.mark.parametrize("argv,fragment", [
    (["--arch", "awd_lstm", "--wdrop", "1.0"], "wdrop"),
    (["--arch", "awd_lstm", "--dropoute", "-0.1"], "dropoute"),
    (["--arch", "awd_lstm", "--alpha", "-1"], "alpha"),
    (["--arch", "awd_lstm", "--last-hidden", "7", "--emb", "16"], "last layer"),  # tied softmax needs emb
    (["--arch", "lstm", "--alpha", "2"], "--alpha"),  # the stacked cells have no AR
    (["--arch", "lstm", "--variable-bptt"], "--variable-bptt"),
])
def test_bad_options_exit_2_with_a_message(argv, fragment, capsys, tmp_path):
    from selfish_deploy.training.cli import main

    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_last_hidden_width_trains_exports_and_runs(tmp_path):
    """``last_hidden`` (zihangdai/mos's nhidlast) sets the last layer's width; untied, the softmax decoder reads
    it. Random weights under random masks, exported with ONNX: the sparse runtime, the dense backend and ONNX
    Runtime equal the eval forward."""
    from selfish_deploy.export.onnx_runner import OnnxLM
    from selfish_deploy.export.writer import export_run
    from selfish_deploy.model import ModelConfig, build_model
    from selfish_deploy.rundir import RUN_FORMAT, RUN_FORMAT_VERSION, save_weights, write_json
    from selfish_deploy.runtime import SparseLM
    from selfish_deploy.vocab import Vocabulary

    cfg = ModelConfig(arch="awd_lstm", vocab_size=30, emb=8, hidden=12, layers=2, tie_weights=False,
                      options={"last_hidden": 10})
    model = build_model(cfg)
    assert [tuple(s[0].shape) for s in model.init_hidden(3)] == [(3, 12), (3, 10)]
    assert model.decoder.weight.shape == (30, 10) and model.rnns[1].weight_hh_l0.shape == (40, 10)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=gen) - 0.5) * 1.2)
    masks = MaskRegistry(model, 0.4, generator=gen)
    run = tmp_path / "run"
    run.mkdir()
    save_weights(run / "model.safetensors", model, masks.masks)
    Vocabulary(["<eos>", "<unk>", *(f"w{i}" for i in range(2, 30))]).save(run / "vocab.txt")
    write_json(run / "config.json", {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "model": cfg.to_dict(),
        "train": {"method": "static", "density": 0.4, "seed": 0}, "corpus": {"name": "synthetic"},
        "vocab_size": 30, "density": masks.total_density(),
        "density_per_tensor": {n: masks.density(n) for n in masks}, "results": {}})
    export_run(run, tmp_path / "export", onnx=True)

    tokens = torch.randint(0, 30, (6, 3), generator=gen)
    model.eval()
    with torch.no_grad():
        ref, _ = model(tokens, model.init_hidden(3))
    for backend in ("sparse", "dense"):
        logp, _ = SparseLM.load(tmp_path / "export", backend=backend).forward(tokens)
        assert ((logp - ref).abs() / ref.abs()).max().item() < 1e-5, backend
    onnx_logp, _ = OnnxLM.load(tmp_path / "export", threads=1).forward(tokens.t().numpy())
    got = torch.from_numpy(onnx_logp).transpose(0, 1)
    assert ((got - ref).abs() / ref.abs()).max().item() < 1e-5


def test_two_processes_draw_the_same_windows_and_match_one(tmp_path, data_dir):
    """Under torchrun both ranks draw the same variable windows (one sampler seed, not per rank: otherwise their
    step counts, and so their collectives, would differ), and with the dropouts off the two-process run trains
    like one process, AR and TAR included (per-rank means over equal column halves average to the global one)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    args = [*AWD_ARGS, "--data-dir", str(data_dir), "--epochs", "1", "--max-batches", "30", "--batch-size", "20",
            "--dropout", "0", "--dropouti", "0", "--dropouth", "0", "--dropoute", "0", "--wdrop", "0",
            "--lr", "2", "--clip", "1000"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "selfish_deploy.training.cli", *args, "--out", str(ddp)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from selfish_deploy.training.cli import main

    assert main([*args, "--out", str(single)]) == 0
    recs = {d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (ddp, single)}
    sync, = [r for r in recs[ddp] if r["event"] == "sync"]
    assert sync["digests"][0] == sync["digests"][1]
    one, two = ([r for r in recs[d] if r["event"] == "epoch"] for d in (single, ddp))
    assert one[0]["step"] == two[0]["step"] == 30
    assert one[0]["train_loss"] == pytest.approx(two[0]["train_loss"], rel=1e-6)
    a, b = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
