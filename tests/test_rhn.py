"""RHN family (selfish_deploy/families/rhn.py): micro-step, carry coupling, dropout masks, runtime trunk, ONNX."""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch

from selfish_deploy import kernels
from selfish_deploy.csr import CSR
from selfish_deploy.families import get_family, rhn
from selfish_deploy.model import ModelConfig
from selfish_deploy.runtime.state import State


def config(depth=3, layers=1, dropout=0.0, **options):
    """A small RHN config, every dropout off unless given."""
    opts = {"depth": depth, "dropouti": 0.0, "dropouth": 0.0, "dropoute": 0.0, **options}
    return ModelConfig(arch="rhn", vocab_size=29, emb=6, hidden=5 if layers > 1 else 6, layers=layers,
                       dropout=dropout, options=opts)


def test_micro_step_against_hand_computation():
    block = rhn.HighwayBlock(2, 2, first=True)
    with torch.no_grad():
        block.W.weight.copy_(torch.tensor([[0.5, -1.0], [0.25, 0.0], [1.0, 1.0], [-0.5, 2.0]]))
        block.W.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        block.R.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.5, 0.5], [2.0, -1.0]]))
        block.R.bias.copy_(torch.tensor([0.0, 0.1, -0.1, 0.2]))
    x, s = [0.3, -0.7], [0.4, -0.2]
    wx = block.W(torch.tensor([x]))
    got = block(wx, torch.tensor([s]), None)[0].tolist()
    W, bW = block.W.weight.tolist(), block.W.bias.tolist()
    R, bR = block.R.weight.tolist(), block.R.bias.tolist()
    a = [sum(W[i][j] * x[j] for j in range(2)) + bW[i] + sum(R[i][j] * s[j] for j in range(2)) + bR[i]
         for i in range(4)]
    for j in range(2):  # rows [h | t]
        h, t = math.tanh(a[j]), 1 / (1 + math.exp(-a[2 + j]))
        assert got[j] == pytest.approx(h * t + s[j] * (1 - t), abs=1e-6)
    # later micro-steps see no input
    later = rhn.HighwayBlock(2, 2, first=False)
    assert later.W is None and [n for n, _ in later.named_parameters()] == ["R.weight", "R.bias"]


def test_carry_gate_is_coupled():
    block = rhn.HighwayBlock(3, 4, first=False)
    s = torch.randn(2, 4)
    with torch.no_grad():
        block.R.bias[4:].fill_(-60.0)  # t = 0: carry c = 1 - t = 1 keeps the state
    assert torch.equal(block(None, s, None), s)
    with torch.no_grad():
        block.R.bias[4:].fill_(60.0)  # t = 1: c = 0, the state is replaced by h
    expect = torch.tanh(block.R(s)[:, :4])
    assert torch.allclose(block(None, s, None), expect, atol=1e-7)
    assert not any("C" in n for n, _ in rhn.RHNTrunk(config()).named_parameters())  # no separate carry weights


def test_parameters_sparse_names_and_gate_blocks():
    cfg = config(depth=4, layers=2)
    trunk = rhn.RHNTrunk(cfg)
    shapes = {"rnns." + n: tuple(p.shape) for n, p in trunk.named_parameters()}  # the model's attribute
    assert shapes == rhn.parameter_shapes(cfg)
    assert shapes["rnns.0.highways.0.W.weight"] == (10, 6) and shapes["rnns.1.highways.3.R.weight"] == (12, 6)
    family = get_family("rhn")
    assert family.sparse(cfg) == [n for n, s in shapes.items() if len(s) == 2]
    assert len(family.sparse(cfg)) == 2 * (1 + 4)  # W and R_0..R_3 per layer; biases dense
    assert family.blocks("rnns.0.highways.2.R.weight", cfg) == ("h", "t")
    assert family.blocks("rnns.0.highways.2.R.bias", cfg) == ("all",)
    assert [tuple(s.shape) for s in family.init_state(cfg, 3)] == [(3, 5), (3, 6)]


def test_zilly_init_sets_transform_biases():
    trunk = rhn.RHNTrunk(config(depth=2, rhn_init="zilly"))
    for layer in trunk:
        for block in layer.highways:
            for lin in (block.W, block.R):
                if lin is not None:
                    assert torch.all(lin.bias[6:] == -2.0) and lin.bias[:6].abs().max() <= 0.04
                    assert lin.weight.abs().max() <= 0.04
    default = rhn.RHNTrunk(config(depth=2))  # theirs: nn.Linear's init, U(-1/sqrt(in), 1/sqrt(in))
    assert default[0].highways[1].R.bias.abs().max() > 0.04 and not (default[0].highways[1].R.bias == -2.0).any()


def test_bad_options_are_user_errors():
    from selfish_deploy.errors import UserError

    for options, word in (({"depth": 0}, "depth"), ({"rhn_init": "glorot"}, "rhn_init"),
                          ({"dropouth": 1.0}, "dropouth"), ({"dropoute": -0.1}, "dropoute")):
        with pytest.raises(UserError, match=word):
            ModelConfig(arch="rhn", options=options)


def _capture(module, store):
    return module.register_forward_hook(lambda m, inp, out: store.append(inp[0].detach().clone()))


def test_dropout_masks_are_shared_over_time_and_redrawn_per_call():
    torch.manual_seed(0)
    cfg = config(depth=2, dropout=0.5, dropouti=0.5, dropouth=0.5)
    trunk = rhn.RHNTrunk(cfg).train()
    T, B, E = 7, 4, 6
    x, s0 = torch.ones(T, B, E), [torch.ones(B, E)]
    w_in, r_in = [], []
    hooks = [_capture(trunk[0].highways[0].W, w_in)]
    hooks += [_capture(b.R, r_in) for b in trunk[0].highways]
    out, _ = trunk(x, s0)
    # input dropout: what W sees is the (B, E) mask, scaled by 1 / (1 - p), at every time step
    m = w_in[0]
    assert set(m.unique().tolist()) <= {0.0, 2.0} and (m == 0).any() and (m != 0).any()
    assert torch.equal(m, m[:1].expand_as(m))
    # hidden dropout: every R_l at every step sees s masked by one (B, H) mask
    assert len(r_in) == T * 2
    zeros = [(r == 0) for r in r_in]
    assert zeros[0].any() and all(torch.equal(z, zeros[0]) for z in zeros)
    # output dropout: one (B, H) mask over time
    assert torch.equal(out == 0, (out[:1] == 0).expand_as(out)) and (out == 0).any()
    # the next call (the next BPTT window) draws new masks
    w_in.clear()
    trunk(x, s0)
    assert not torch.equal(w_in[0], m)
    # evaluation: no dropout, deterministic
    trunk.eval()
    a, _ = trunk(x, s0)
    b, _ = trunk(x, s0)
    assert torch.equal(a, b) and not (a == 0).any()
    for h in hooks:
        h.remove()


def test_embedded_dropout_drops_whole_rows():
    torch.manual_seed(1)
    weight = torch.randn(50, 4)
    tokens = torch.arange(50).repeat(3).view(3, 50)
    e = rhn.embedded_dropout(weight, tokens, 0.5, training=True)
    dropped = (e[0] == 0).all(dim=1)
    assert dropped.any() and (~dropped).any()
    assert torch.equal((e == 0).all(dim=2), dropped.expand(3, 50))  # a word is dropped everywhere it occurs
    assert torch.allclose(e[0][~dropped], 2 * weight[~dropped])
    assert torch.equal(rhn.embedded_dropout(weight, tokens, 0.5, training=False), weight[tokens])


class _Exported:
    def __init__(self, config):
        self.model_config = config


def _random_model(cfg, density, seed):
    """Embedding + trunk with random weights, each matrix under a random mask of ``density``."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.nn.Embedding(cfg.vocab_size, cfg.emb)
    trunk = rhn.RHNTrunk(cfg)
    masks = {}
    with torch.no_grad():
        params = {"encoder.weight": emb.weight, **{"rnns." + n: p for n, p in trunk.named_parameters()}}
        for n, p in params.items():
            p.copy_((torch.rand(p.shape, generator=gen) - 0.5) * 1.6)
            if p.dim() == 2:
                masks[n] = torch.rand(p.shape, generator=gen) < density
                p.mul_(masks[n])
    return emb.eval(), trunk.eval(), params, masks


def _runtime_trunk(cfg, params, masks, density, ks):
    def matrix(name):
        if density < 1.0:
            return kernels.Matrix(csr=CSR.from_masked(params[name], masks[name]))
        return kernels.Matrix(dense=params[name].detach())

    return rhn.RHNSparseTrunk(_Exported(cfg), matrix, lambda n: params[n].detach().float().clone(), ks)


KERNELS = [kernels.Reference()] + ([kernels.kernels_for("cpu", 1)] if kernels.compiled_available() else [])


@pytest.mark.parametrize("ks", KERNELS, ids=lambda k: k.name.split()[0])
@pytest.mark.parametrize("density", [0.05, 0.33, 1.0])
@pytest.mark.parametrize("batch", [1, 3])
def test_runtime_trunk_equals_eval_forward(ks, density, batch):
    cfg = config(depth=3, layers=2)
    emb, trunk, params, masks = _random_model(cfg, density, seed=int(density * 100) + batch)
    runtime = _runtime_trunk(cfg, params, masks, density, ks)
    T = 5
    tokens = torch.randint(0, cfg.vocab_size, (T, batch), generator=torch.Generator().manual_seed(3))
    state = [torch.randn(batch, w) * 0.5 for _, w in cfg.layer_sizes()]
    with torch.no_grad():
        want, want_state = trunk(emb(tokens), state)
    got, got_state = runtime(tokens, State(state))
    assert isinstance(got_state, State) and got.shape == (cfg.emb, T * batch)
    want_fm = want.reshape(T * batch, -1).t()  # (H, T*B), column t*B + b
    assert ((got - want_fm).abs().max() / want_fm.abs().max()) < 1e-5
    for g, w in zip(got_state, want_state):
        assert ((g - w).abs().max() / w.abs().max()) < 1e-5
    # state carries over: two halves equal the whole
    a, sa = runtime(tokens[:2], State(state))
    b, _ = runtime(tokens[2:], sa)
    assert torch.allclose(torch.cat([a, b], 1), got, rtol=0, atol=1e-6)


def test_onnx_trunk_equals_pytorch():
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, checker, helper

    from selfish_deploy.export.onnx_graph import OPSET, OnnxGraph

    cfg = config(depth=3, layers=2)
    emb, trunk, params, masks = _random_model(cfg, 0.4, seed=5)
    g = OnnxGraph(None, sparse=False)
    weight = lambda n: g.weight(n, params[n].detach(), masks[n])  # noqa: E731
    vector = lambda n: g.const(n, params[n].detach().numpy())  # noqa: E731
    widths = [w for _, w in cfg.layer_sizes()]
    s_in, s_out = [f"s0_{k}" for k in range(cfg.layers)], [f"sn_{k}" for k in range(cfg.layers)]
    y = rhn.onnx_trunk(g, weight, vector, cfg, "x", s_in, s_out)
    g.node("Identity", [y], "y")
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", f32, ["seq", "batch", cfg.emb])]
    inputs += [helper.make_tensor_value_info(n, f32, ["batch", w]) for n, w in zip(s_in, widths)]
    outputs = [helper.make_tensor_value_info("y", f32, ["seq", "batch", cfg.out_size])]
    outputs += [helper.make_tensor_value_info(n, f32, ["batch", w]) for n, w in zip(s_out, widths)]
    model = helper.make_model(helper.make_graph(g.nodes, "rhn", inputs, outputs, initializer=g.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for T, B in ((6, 3), (1, 1)):
        x = torch.randn(T, B, cfg.emb)
        state = [torch.randn(B, w) * 0.5 for w in widths]
        with torch.no_grad():
            want, want_state = trunk(x, state)
        got = sess.run(["y", *s_out], {"x": x.numpy(), **{n: s.numpy() for n, s in zip(s_in, state)}})
        np.testing.assert_allclose(got[0], want.numpy(), rtol=1e-5, atol=1e-6)
        for g_s, w_s in zip(got[1:], want_state):
            np.testing.assert_allclose(g_s, w_s.numpy(), rtol=1e-5, atol=1e-6)


# --- phase 2: the registered family, trained through the CLI, exported, run -----------------------------------

TINY = ["--corpus", "ptb-tiny", "--arch", "rhn", "--layers", "1", "--hidden", "16", "--emb", "16", "--depth", "3",
        "--density", "0.4", "--method", "selfish", "--batch-size", "20", "--bptt", "10", "--seed", "3",
        "--max-batches", "12", "--log-interval", "1000", "--dropouti", "0.3", "--dropouth", "0.2",
        "--dropoute", "0.1", "--dropout", "0.3"]


@pytest.fixture(scope="module")
def tiny_rhn(tmp_path_factory, data_dir):
    """A 2-epoch selfish RHN on ptb-tiny through selfish-train, exported with --onnx: (run dir, export dir)."""
    from selfish_deploy.export.cli import main as export
    from selfish_deploy.training.cli import main as train

    root = tmp_path_factory.mktemp("rhn")
    assert train([*TINY, "--data-dir", str(data_dir), "--epochs", "2", "--out", str(root / "run")]) == 0
    assert export([str(root / "run"), "--out", str(root / "export"), "--onnx"]) == 0
    return root / "run", root / "export"


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_cli_refuses_a_bad_depth(tmp_path, data_dir, capsys):
    from selfish_deploy.training.cli import main as train

    assert train([*TINY, "--data-dir", str(data_dir), "--depth", "0", "--out", str(tmp_path / "r")]) == 2
    assert "depth" in capsys.readouterr().err


def test_registered_family_declares_the_authors_tensors():
    from selfish_deploy.families import get_family, sparse_names
    from selfish_deploy.model import ModelConfig, build_model

    cfg = ModelConfig(arch="rhn", vocab_size=50, emb=8, hidden=8, layers=1, options={"depth": 4})
    model = build_model(cfg)
    names = [n for n, _ in model.named_parameters()]
    assert names[:3] == ["encoder.weight", "rnns.0.highways.0.W.weight", "rnns.0.highways.0.W.bias"]
    # sparse_rnn_core.Masking (model RHN): embedding (= tied decoder), W and R of every highway; biases dense
    assert sparse_names(cfg) == ["encoder.weight", "rnns.0.highways.0.W.weight",
                                 *(f"rnns.0.highways.{l}.R.weight" for l in range(4))]
    family = get_family("rhn")
    assert family.blocks("rnns.0.highways.3.R.weight", cfg) == ("h", "t") and family.death_rate == 0.5
    assert cfg.options == {"depth": 4, "dropouti": 0.65, "dropouth": 0.25, "dropoute": 0.2, "rhn_init": "selfish"}
    assert [tuple(s.shape) for s in model.init_hidden(3)] == [(3, 8)]


def test_recipes_are_the_authors():
    from selfish_deploy.training.config import TrainConfig, load_recipe

    cfg = TrainConfig.from_dict(load_recipe("ptb-rhn"))
    assert (cfg.arch, cfg.layers, cfg.emb, cfg.hidden, cfg.tie_weights, cfg.density, cfg.lr, cfg.clip) == (
        "rhn", 1, 830, 830, True, 0.472, 15.0, 0.25)
    assert (cfg.dropout, cfg.epochs, cfg.seed, cfg.weight_decay, cfg.bptt, cfg.batch_size) == (
        0.65, 500, 42, 1.2e-6, 35, 20)
    assert cfg.options == {"depth": 10, "dropouti": 0.65, "dropouth": 0.25, "dropoute": 0.2}
    cpu = TrainConfig.from_dict(load_recipe("ptb-rhn-cpu"))
    assert (cpu.arch, cpu.density, cpu.options["depth"], cpu.lr) == ("rhn", 0.472, 4, 15.0)  # see its comment


def test_tiny_run_exports_and_the_sparse_trunk_equals_the_eval_forward(tiny_rhn):
    from selfish_deploy.exportdir import load_export
    from selfish_deploy.rundir import load_run

    run_dir, export_dir = tiny_rhn
    run = load_run(run_dir)
    model = run.build_model()
    exported = load_export(export_dir)
    assert set(exported.sparse) == {"encoder.weight", "rnns.0.highways.0.W.weight",
                                    *(f"rnns.0.highways.{l}.R.weight" for l in range(3))}
    for name, csr in exported.sparse.items():  # the trained masks, exactly
        assert torch.equal(csr.mask(), run.masks[name])

    def matrix(name):
        w = exported.weight(name)
        return kernels.Matrix(csr=w) if isinstance(w, CSR) else kernels.Matrix(dense=w)

    trunk = rhn.RHNSparseTrunk(exported, matrix, lambda n: exported.dense[n].float(), kernels.kernels_for("cpu"))
    tokens = torch.randint(0, model.config.vocab_size, (9, 3), generator=torch.Generator().manual_seed(0))
    state = model.init_hidden(3)
    with torch.no_grad():
        x = model.encoder(tokens)
        want, want_state = model.trunk(x, state)
        want_lp, _ = model(tokens, state)
    got, got_state = trunk(tokens, State(state))
    assert _rel(got, want.reshape(27, -1).t()) < 1e-5 and _rel(got_state[0], want_state[0]) < 1e-5
    # and through the softmax head: the log-probabilities
    logp = torch.log_softmax(exported.dense["decoder.bias"].float()[:, None] +
                             exported.weight("encoder.weight").to_dense(torch.float32) @ got, dim=0).t()
    assert _rel(logp, want_lp.reshape(27, -1)) < 1e-5


def _reference(run_dir, T, B, seed):
    from selfish_deploy.rundir import load_run

    model = load_run(run_dir).build_model()
    tokens = torch.randint(0, model.config.vocab_size, (T, B), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want, want_state = model(tokens, model.init_hidden(B))
    return tokens, want, want_state


def test_tiny_run_onnx_equals_the_eval_forward(tiny_rhn):
    pytest.importorskip("onnxruntime")
    from selfish_deploy.export.onnx_runner import OnnxLM

    run_dir, export_dir = tiny_rhn
    onnx = OnnxLM.load(export_dir)
    assert not onnx.one_step and onnx.state_inputs == ["h0_layer0"]
    for T, B in ((7, 3), (1, 1)):
        tokens, want, want_state = _reference(run_dir, T, B, seed=T)
        logp, state = onnx.forward(tokens.t())
        assert _rel(torch.from_numpy(logp).permute(1, 0, 2), want) < 1e-5
        assert _rel(torch.from_numpy(state[0]), want_state[0]) < 1e-5


def test_tiny_run_scores_in_sparse_lm_as_the_eval_forward(tiny_rhn):
    from selfish_deploy.runtime import SparseLM

    run_dir, export_dir = tiny_rhn
    tokens, want, want_state = _reference(run_dir, 7, 3, seed=1)
    lm = SparseLM.load(export_dir)
    got, got_state = lm.forward(tokens)
    assert _rel(got, want) < 1e-5 and _rel(got_state[0], want_state[0]) < 1e-5
    # one token at a time, the state carried, gives the same log-probabilities
    state, steps = lm.init_state(3), []
    for t in range(7):
        lp, state = lm.forward(tokens[t:t + 1], state)
        steps.append(lp)
    assert _rel(torch.cat(steps), want) < 1e-5


def test_tiny_run_is_served_and_every_backend_agrees(tiny_rhn):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from selfish_deploy.rundir import load_run
    from selfish_deploy.runtime import SparseLM
    from selfish_deploy.serving.app import create_app

    run_dir, export_dir = tiny_rhn
    model = load_run(run_dir).build_model()
    lm = SparseLM.load(export_dir)
    text = "the company said it expects higher sales"
    ids = lm.vocab.encode(text, add_eos=True)
    with torch.no_grad():
        logp, _ = model(torch.tensor([lm.vocab.eos_id] + ids[:-1]).view(-1, 1), model.init_hidden(1))
    want = logp[:, 0].gather(1, torch.tensor(ids).view(-1, 1)).view(-1)
    with TestClient(create_app(lm, "rhn")) as client:
        health = client.get("/health").json()
        assert health["arch"] == "rhn"
        r = client.post("/v1/score", json={"text": text})
        assert r.status_code == 200, r.text
        assert torch.allclose(torch.tensor(r.json()["logprobs"]), want, rtol=1e-5, atol=1e-5)
    greedy = {}
    for backend in ("sparse", "dense", "onnx"):
        other = SparseLM.load(export_dir, backend=backend)
        scored = other.score_ids([[lm.vocab.eos_id] + ids])[0].logprobs
        assert torch.allclose(torch.tensor(scored), want, rtol=1e-5, atol=1e-5), backend
        greedy[backend] = other.generate(ids[:3], max_tokens=5, temperature=0).token_ids
    assert greedy["sparse"] == greedy["dense"] == greedy["onnx"] and len(greedy["sparse"]) == 5


@pytest.mark.parametrize("density,dtype", [(0.05, "fp32"), (0.33, "fp16"), (0.47, "fp32")])
def test_batched_sequences_are_themselves_alone(exports, density, dtype):
    """Two layers of depth 10 (20 micro-steps a token; test_runtime checks every backend against dense at
    batch 1, 3 and 64): a batched sequence's numbers are its numbers alone, bit for bit, and equal dense."""
    from selfish_deploy.runtime import SparseLM

    path = exports("rhn", density, dtype)
    sparse, dense = SparseLM.load(path), SparseLM.load(path, backend="dense")
    gen = torch.Generator().manual_seed(1)
    for B in (3, 64):
        tokens = torch.randint(0, 41, (5, B), generator=gen)
        state = sparse.init_state(B).map(lambda t: torch.rand(t.shape, generator=gen) - 0.5)
        got, _ = sparse.forward(tokens, state)
        assert _rel(got, dense.forward(tokens, state)[0]) < 1e-5
        alone, _ = sparse.forward(tokens[:, 2:3].contiguous(), state.select([2]))
        assert torch.equal(got[:, 2:3], alone)


@pytest.mark.skipif(not kernels.compiled_available(), reason="compiled kernels not built")
@pytest.mark.parametrize("density", [0.33, 1.0])
def test_one_call_step_equals_the_general_path(exports, density):
    """A generation step goes through the compiled one-call step (RhnStep): bit for bit the numbers and state
    of embed + spmm + rhn_recurrent + decoder; a state in another layout falls back to that path."""
    from conftest import assert_one_call_step_is_the_general_path

    from selfish_deploy.runtime import SparseLM

    assert_one_call_step_is_the_general_path(SparseLM.load(exports("rhn", density)))
