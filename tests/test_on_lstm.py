"""ON-LSTM (families/on_lstm.py) against the authors' equations and random draws, its masks through DropConnect
and SNT-ASGD, the sparse runtime trunk and the ONNX graph against the eval forward, and a ptb-tiny run trained,
exported, run on every backend and served."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfish_deploy import kernels
from selfish_deploy.csr import CSR
from selfish_deploy.exportdir import ExportedModel
from selfish_deploy.families import on_lstm
from selfish_deploy.masks import MaskRegistry
from selfish_deploy.model import ModelConfig, build_model


def Cfg(vocab_size=29, emb=8, hidden=12, layers=2, tie_weights=True, dropout=0.4, options=None) -> ModelConfig:
    """An on_lstm ModelConfig (the family's validate runs in it)."""
    return ModelConfig(arch="on_lstm", vocab_size=vocab_size, emb=emb, hidden=hidden, layers=layers,
                       tie_weights=tie_weights, dropout=dropout, options=options or {})


def small_cfg(**opts) -> ModelConfig:
    return Cfg(emb=8, hidden=12, options={"chunk_size": 4, **opts})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def randomize(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.rand(p.shape, generator=gen) - 0.5) * 1.2)


# --- the cell's equations -----------------------------------------------------------------------------------

def test_cumax_by_hand():
    x = torch.tensor([[0.0, math.log(2.0), math.log(3.0)]])  # softmax = [1, 2, 3] / 6
    torch.testing.assert_close(on_lstm.cumax(x), torch.tensor([[1 / 6, 1 / 2, 1.0]]))
    # along dim 0 as the runtime's feature-major columns use it
    torch.testing.assert_close(on_lstm.cumax(x.t(), dim=0), torch.tensor([[1 / 6], [1 / 2], [1.0]]))


def authors_cell(cell, x, hidden, n_chunk, chunk_size, dropconnect):
    """A transcription of ``ONLSTMCell.forward`` (Ordered-Neurons ON_LSTM.py), eval mode: ``LinearDropConnect``
    then uses ``weight * (1 - dropout)``; the cell state is (B, n_chunk, chunk_size)."""
    hx, cx = hidden
    transformed_input = F.linear(x, cell.ih[0].weight, cell.ih[0].bias)
    gates = transformed_input + F.linear(hx, cell.hh.weight * (1 - dropconnect), cell.hh.bias)
    cingate, cforgetgate = gates[:, :n_chunk * 2].chunk(2, 1)
    outgate, cell_, ingate, forgetgate = gates[:, n_chunk * 2:].view(-1, n_chunk * 4, chunk_size).chunk(4, 1)
    cingate = 1. - torch.cumsum(F.softmax(cingate, dim=-1), dim=-1)
    cforgetgate = torch.cumsum(F.softmax(cforgetgate, dim=-1), dim=-1)
    cingate = cingate[:, :, None]
    cforgetgate = cforgetgate[:, :, None]
    ingate = torch.sigmoid(ingate)
    forgetgate = torch.sigmoid(forgetgate)
    cell_ = torch.tanh(cell_)
    outgate = torch.sigmoid(outgate)
    overlap = cforgetgate * cingate
    forgetgate = forgetgate * overlap + (cforgetgate - overlap)
    ingate = ingate * overlap + (cingate - overlap)
    cy = forgetgate * cx + ingate * cell_
    hy = outgate * torch.tanh(cy)
    return hy.view(-1, cell.hidden_size), cy


def test_one_step_equals_authors_cell():
    cfg = Cfg(emb=10, hidden=20, layers=1, tie_weights=False, options={"chunk_size": 5, "wdrop": 0.3})
    trunk = on_lstm.ONLSTMTrunk(cfg).eval()
    randomize(trunk, 1)
    B, H, n = 3, 20, 4
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, B, 10, generator=gen)
    h0, c0 = torch.randn(B, H, generator=gen) * 0.5, torch.randn(B, H, generator=gen) * 0.5
    out, [(h, c)] = trunk(x, [(h0, c0)])
    hy, cy = authors_cell(trunk.cells[0], x[0], (h0, c0.view(B, n, 5)), n, 5, 0.3)
    torch.testing.assert_close(h, hy, rtol=0, atol=1e-6)
    torch.testing.assert_close(c, cy.reshape(B, H), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0], hy, rtol=0, atol=1e-6)  # eval: no locked dropout on the output
    # the row blocks: 2 chunks-rows per master gate, then o, g, i, f of H rows each
    assert on_lstm.gate_block_rows("rnn.cells.0.hh.weight", cfg) == (4, 4, 20, 20, 20, 20)
    assert trunk.cells[0].hh.weight.shape == (4 * H + 2 * n, H)


def authors_training_forward(model, tokens, hidden, p):
    """``RNNModel.forward`` + ``ONLSTMStack.forward`` in training mode (Ordered-Neurons model.py, ON_LSTM.py,
    embed_regularize.py, locked_dropout.py), transcribed with their random draws, on ``model``'s weights."""
    enc = model.encoder.weight
    mask = enc.new_empty(enc.size(0), 1).bernoulli_(1 - p["dropoute"]).expand_as(enc) / (1 - p["dropoute"])
    emb = F.embedding(tokens, mask * enc)

    def lockdrop(x, dropout):
        m = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - dropout)
        return m / (1 - dropout) * x

    emb = lockdrop(emb, p["dropouti"])
    cells = model.rnn.cells
    weights = []
    for c in cells:  # sample_masks(): uint8 Bernoulli(dropout), masked_fill
        drop = c.hh.weight.new_empty(c.hh.weight.size(), dtype=torch.uint8).bernoulli_(p["wdrop"])
        weights.append(c.hh.weight.masked_fill(drop.bool(), 0.0))
    prev_layer, prev_state = emb, list(hidden)
    for l, c in enumerate(cells):
        n_chunk, cs = c.hidden_size // c.chunk_size, c.chunk_size
        t_input = c.ih(prev_layer)
        outs = []
        for t in range(tokens.size(0)):
            hx, cx = prev_state[l]
            gates = t_input[t] + F.linear(hx, weights[l], c.hh.bias)
            cingate, cforgetgate = gates[:, :n_chunk * 2].chunk(2, 1)
            outgate, cell, ingate, forgetgate = gates[:, n_chunk * 2:].view(-1, n_chunk * 4, cs).chunk(4, 1)
            cingate = (1. - torch.cumsum(F.softmax(cingate, dim=-1), dim=-1))[:, :, None]
            cforgetgate = torch.cumsum(F.softmax(cforgetgate, dim=-1), dim=-1)[:, :, None]
            overlap = cforgetgate * cingate
            forgetgate = torch.sigmoid(forgetgate) * overlap + (cforgetgate - overlap)
            ingate = torch.sigmoid(ingate) * overlap + (cingate - overlap)
            cy = forgetgate * cx.view(-1, n_chunk, cs) + ingate * torch.tanh(cell)
            hy = (torch.sigmoid(outgate) * torch.tanh(cy)).view(-1, c.hidden_size)
            prev_state[l] = hy, cy.view(-1, c.hidden_size)
            outs.append(hy)
        prev_layer = torch.stack(outs)
        if l < len(cells) - 1:
            prev_layer = lockdrop(prev_layer, p["dropouth"])
    raw_output = prev_layer
    output = lockdrop(raw_output, p["dropout"])
    logits = F.linear(output, model.encoder.weight, model.decoder.bias)  # tied decoder
    return torch.log_softmax(logits, -1), prev_state, raw_output


def test_training_forward_equals_the_authors_with_their_random_draws():
    p = {"dropoute": 0.1, "dropouti": 0.5, "wdrop": 0.45, "dropouth": 0.3, "dropout": 0.45}
    cfg = Cfg(dropout=p["dropout"], options={"chunk_size": 4, **{k: v for k, v in p.items() if k != "dropout"}})
    model = build_model(cfg).train()
    randomize(model, 4)
    tokens = torch.randint(0, cfg.vocab_size, (6, 3), generator=torch.Generator().manual_seed(1))
    hidden = model.init_hidden(3)
    torch.manual_seed(123)
    ref, ref_state, raw = authors_training_forward(model, tokens, hidden, p)
    torch.manual_seed(123)
    logp, state = model(tokens, hidden)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-6)
    for (h, c), (rh, rc) in zip(state, ref_state, strict=True):
        torch.testing.assert_close(h, rh, rtol=0, atol=1e-6)
        torch.testing.assert_close(c, rc, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.rnn.ar_input, raw, rtol=0, atol=1e-6)


def test_parameter_shapes_and_sparse_names_match_the_module():
    cfg = small_cfg()
    trunk = on_lstm.ONLSTMTrunk(cfg)
    shapes = {f"{on_lstm.TRUNK}.{n}": tuple(p.shape) for n, p in trunk.named_parameters()}
    assert on_lstm.parameter_shapes(cfg) == shapes
    # Selfish-RNN's sparse set: every non-bias tensor, hh.weight of each layer included
    assert on_lstm.sparse_names(cfg) == [f"rnn.cells.{k}.{w}" for k in range(2) for w in ("ih.0.weight", "hh.weight")]
    state = on_lstm.FAMILY.init_state(cfg, 3)
    assert [tuple(s.shape) for layer in state for s in layer] == [(3, 12)] * 2 + [(3, 8)] * 2


def test_per_gate_densities_use_the_unequal_blocks():
    cfg = Cfg(emb=10, hidden=20, options={"chunk_size": 5})  # layer 0: rows 4, 4, 20, 20, 20, 20
    model = build_model(cfg)
    masks = MaskRegistry(model, density=0.5, generator=torch.Generator().manual_seed(0))
    name = "rnn.cells.0.hh.weight"
    m = masks.masks[name]
    m.zero_()
    m[0:4] = True  # master_i (rows 0..4) all alive, master_f (4..8) dead; g, i, f dead
    m[8:18] = True  # half of o (rows 8..28)
    assert masks.gate_blocks(name) == on_lstm.GATE_NAMES
    assert masks.gate_densities(name) == [1.0, 0.0, 0.5, 0.0, 0.0, 0.0]
    exported = ExportedModel(config={}, model_config=cfg, vocab=None,
                             sparse={name: CSR.from_masked(torch.ones(m.shape), m)})
    assert exported.tensor_info()[name]["gates"] == [1.0, 0.0, 0.5, 0.0, 0.0, 0.0]
    assert masks.gate_blocks("rnn.cells.0.hh.bias") == ("all",) and masks.gate_blocks("encoder.weight") == ("all",)


def test_chunk_size_must_divide_every_width():
    from selfish_deploy.errors import UserError

    with pytest.raises(UserError, match="multiple of chunk_size"):
        Cfg(emb=8, hidden=12, options={"chunk_size": 5})  # ModelConfig runs the family's validate
    with pytest.raises(UserError, match="wdrop"):
        Cfg(options={"chunk_size": 4, "wdrop": 1.0})


# --- masks through DropConnect ------------------------------------------------------------------------------

def test_mask_exact_through_dropconnect():
    torch.manual_seed(0)
    cfg = small_cfg(wdrop=0.5, dropouti=0.0, dropouth=0.0, dropoute=0.0)
    model = build_model(cfg)
    masks = MaskRegistry(model, density=0.4, generator=torch.Generator().manual_seed(3))
    hh = [f"rnn.cells.{k}.hh.weight" for k in range(2)]
    assert list(masks.masks) == ["encoder.weight", "rnn.cells.0.ih.0.weight", hh[0], "rnn.cells.1.ih.0.weight", hh[1]]
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tokens = torch.randint(0, cfg.vocab_size, (5, 3))
    for _ in range(3):
        before = {n: p.detach().clone() for n, p in params.items()}
        model.train()
        logp, _ = model(tokens, model.init_hidden(3))
        for n, p in params.items():  # the forward wrote nothing into the parameters
            assert torch.equal(p.detach(), before[n]), n
        (-logp[..., 0].mean()).backward()
        dropped = {}
        for n in hh:  # a weight DropConnect dropped this forward gets no gradient and keeps its value
            g, alive = params[n].grad, masks.masks[n]
            dropped[n] = (g == 0) & alive
            assert bool(dropped[n].any()) and bool(((g != 0) & alive).any())
        masks.mask_grads_()
        opt.step()
        opt.zero_grad()
        masks.apply_()
        masks.check()  # exact nnz, nothing alive outside the mask
        for n in hh:
            assert torch.equal(params[n].detach()[dropped[n]], before[n][dropped[n]])
            assert not torch.equal(params[n].detach(), before[n])  # the rest did train


def test_snt_asgd_averages_every_hh_weight_under_its_mask():
    """Selfish-RNN's Sparse_ASGD masks only encoder and ih.0.weight for ON-LSTM (init_optimizer_mask); ours
    averages hh.weight per weight under its mask too: dead weights average to 0, alive ones from their step."""
    from selfish_deploy.training.config import TrainConfig
    from selfish_deploy.training.optim import build_optimizer

    cfg = small_cfg(wdrop=0.5)
    model = build_model(cfg).train()
    masks = MaskRegistry(model, density=0.3, generator=torch.Generator().manual_seed(1))
    opt = build_optimizer("snt-asgd", model, TrainConfig(arch="on_lstm", lr=0.5, asgd_after=0), masks.masks)
    tokens = torch.randint(0, cfg.vocab_size, (4, 2))
    for _ in range(3):
        logp, _ = model(tokens, model.init_hidden(2))
        (-logp[..., 1].mean()).backward()
        masks.mask_grads_()
        opt.step()
        opt.zero_grad()
        masks.apply_()
    averaged = opt.averaged()
    for k in range(2):
        name = f"rnn.cells.{k}.hh.weight"
        mask = masks.masks[name]
        assert torch.equal(opt.ages(name), mask.float() * 3)  # one age per weight: 3 alive steps, 0 if dead
        assert bool((averaged[name][~mask] == 0).all()) and bool((averaged[name][mask] != 0).any())


def test_dropconnect_train_and_eval_weights():
    cfg = small_cfg(wdrop=0.25)
    hh = on_lstm.ONLSTMTrunk(cfg).cells[0].hh
    torch.manual_seed(1)
    w = hh.effective_weight()
    kept = w != 0
    assert torch.equal(w[kept], hh.weight.detach()[kept])  # no rescaling in training (LinearDropConnect)
    assert 0.6 < kept.float().mean() < 0.9
    hh.eval()
    torch.testing.assert_close(hh.effective_weight(), hh.weight * 0.75)


def test_ar_tar_input_is_the_raw_last_layer():
    cfg = Cfg(dropout=0.5, options={"chunk_size": 4})
    trunk = on_lstm.ONLSTMTrunk(cfg).train()
    torch.manual_seed(0)
    out, _ = trunk(torch.randn(4, 2, 8), on_lstm.FAMILY.init_state(cfg, 2))
    raw = trunk.ar_input
    assert raw is trunk.tar_input and raw.shape == out.shape
    kept = out != 0
    torch.testing.assert_close(out[kept], raw[kept] * 2.0)  # out = locked dropout(raw), p = 0.5
    assert bool((out == 0).any())
    trunk.eval()
    trunk(torch.randn(4, 2, 8), on_lstm.FAMILY.init_state(cfg, 2))
    assert trunk.ar_input is None and trunk.tar_input is None  # no graph kept in evaluation


# --- runtime trunk and ONNX against the eval forward --------------------------------------------------------

def build(cfg, density: float, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A model with random weights under random masks, and its export in memory (CSR below density 1; CSR
    values in ``dtype``, the model's weights rounded to it, as an fp16/bf16 export is computed)."""
    model = build_model(cfg)
    randomize(model, seed)
    masks = MaskRegistry(model, density=density, generator=torch.Generator().manual_seed(seed))
    sparse, dense = {}, {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks.masks and density < 1.0:
                sparse[n] = CSR.from_masked(p, masks.masks[n], dtype)
                p.copy_(sparse[n].to_dense(torch.float32))
            else:
                dense[n] = p.detach().clone()
    exported = ExportedModel(config={"dtype": "fp32"}, model_config=cfg, vocab=None, sparse=sparse, dense=dense)
    return model.eval(), exported


def trunk_forward(model, tokens, state):
    """The eval forward up to the decoder: embedding, then the trunk."""
    with torch.no_grad():
        return model.rnn(model.encoder(tokens), state)


def sparse_trunk(exported, which: str):
    ker = kernels.Reference() if which == "reference" else kernels.kernels_for("cpu", 1)
    if which == "compiled" and ker.name == "reference":
        pytest.skip("compiled kernels not built")

    def matrix(name):
        w = exported.weight(name)
        return kernels.Matrix(csr=w) if isinstance(w, CSR) else kernels.Matrix(dense=w)

    return on_lstm.SparseTrunk(exported, matrix, lambda n: exported.dense[n].float().contiguous(), ker)


@pytest.mark.parametrize("which", ["reference", "compiled"])
@pytest.mark.parametrize("density", [0.05, 0.33, 1.0])
@pytest.mark.parametrize("batch", [1, 3])
def test_runtime_trunk_equals_eval_forward(which, density, batch):
    cfg = small_cfg(wdrop=0.45)  # the eval W_hh is scaled by 0.55: the runtime must scale too
    model, exported = build(cfg, density, seed=int(density * 100) + batch)
    run = sparse_trunk(exported, which)
    gen = torch.Generator().manual_seed(batch)
    tokens = torch.randint(0, cfg.vocab_size, (6, batch), generator=gen)
    state = [tuple(torch.randn(batch, w, generator=gen) * 0.3 for _ in range(2)) for _, w in cfg.layer_sizes()]
    ref, ref_state = trunk_forward(model, tokens, state)
    x, new = run(tokens, state)
    assert x.shape == (cfg.out_size, 6 * batch)
    assert rel_err(x.t().reshape(6, batch, -1), ref) < 1e-5
    for (h, c), (rh, rc) in zip(new, ref_state):
        assert rel_err(h, rh) < 1e-5 and rel_err(c, rc) < 1e-5
    # continuing from the returned state equals one longer call
    x1, s1 = run(tokens[:4], state)
    x2, _ = run(tokens[4:], s1)
    assert rel_err(torch.cat([x1, x2], dim=1), x) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_runtime_trunk_reads_fp16_and_bf16_values(dtype):
    cfg = small_cfg(wdrop=0.45)
    model, exported = build(cfg, 0.33, seed=11, dtype=dtype)
    assert exported.sparse["rnn.cells.0.hh.weight"].values.dtype == dtype
    tokens = torch.randint(0, cfg.vocab_size, (5, 3), generator=torch.Generator().manual_seed(2))
    ref, _ = trunk_forward(model, tokens, model.init_hidden(3))
    for which in ("reference", "compiled"):
        if which == "compiled" and kernels.kernels_for("cpu").name == "reference":
            continue
        x, _ = sparse_trunk(exported, which)(tokens, model.init_hidden(3))
        assert rel_err(x.t().reshape(5, 3, -1), ref) < 1e-5, which


@pytest.mark.parametrize("density, sparse_init, dtype", [(0.33, False, torch.float32), (0.33, True, torch.float32),
                                                         (1.0, False, torch.float32), (0.33, True, torch.float16)])
def test_onnx_equals_pytorch(density, sparse_init, dtype):
    """The whole model.onnx (embedding, the Scan-looped trunk, the softmax decoder) against the eval forward."""
    ort = pytest.importorskip("onnxruntime")
    from selfish_deploy.export.onnx_graph import build_onnx

    cfg = small_cfg(wdrop=0.45)
    model, exported = build(cfg, density, seed=5, dtype=dtype)
    onnx_model = build_onnx(exported, sparse=sparse_init)  # runs onnx.checker
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == ["tokens", "h0_layer0", "c0_layer0", "h0_layer1", "c0_layer1"]
    gen = torch.Generator().manual_seed(9)
    for T, B in ((5, 3), (1, 1)):
        tokens = torch.randint(0, cfg.vocab_size, (T, B), generator=gen)
        state = [tuple(torch.randn(B, w, generator=gen) * 0.3 for _ in range(2)) for _, w in cfg.layer_sizes()]
        flat = [t for s in state for t in s]
        feeds = {"tokens": tokens.t().numpy(), **{n: t.numpy() for n, t in zip(names[1:], flat, strict=True)}}
        logp, *new = sess.run(None, feeds)
        with torch.no_grad():
            ref, ref_state = model(tokens, state)
        assert rel_err(torch.from_numpy(logp).transpose(0, 1), ref) < 1e-5
        for got, want in zip(new, [t for s in ref_state for t in s], strict=True):
            assert rel_err(torch.from_numpy(got), want) < 1e-5
    scans = [n for n in onnx_model.graph.node if n.op_type == "Scan"]
    assert len(scans) == 2  # one per layer, the body a single step of standard operators
    body_ops = {n.op_type for s in scans for n in s.attribute[0].g.node}
    assert {"Gemm", "Split", "Softmax", "CumSum", "Sigmoid", "Tanh", "Mul", "Add"} <= body_ops


# --- end to end: train -> export -> runtime / ONNX / server --------------------------------------------------

@pytest.fixture(scope="module")
def on_lstm_run(tmp_path_factory, data_dir):
    """A real (short) selfish ON-LSTM run on ptb-tiny through the CLI, with its CSR + ONNX export."""
    from selfish_deploy.export.cli import main as export_main
    from selfish_deploy.training.cli import main as train_main

    root = tmp_path_factory.mktemp("on_lstm")
    run, export = root / "run", root / "export"
    assert train_main(["--data-dir", str(data_dir), "--corpus", "ptb-tiny", "--arch", "on_lstm", "--layers", "2",
                       "--hidden", "20", "--emb", "10", "--chunk-size", "5", "--method", "selfish", "--density",
                       "0.45", "--epochs", "2", "--max-batches", "6", "--batch-size", "10", "--bptt", "20",
                       "--eval-batch-size", "10", "--test-batch-size", "10", "--asgd-after", "1", "--seed", "3",
                       "--log-interval", "1000", "--out", str(run)]) == 0
    assert export_main([str(run), "--out", str(export), "--onnx"]) == 0
    return run, export


def test_trained_run_exports_and_every_backend_equals_the_eval_forward(on_lstm_run):
    from selfish_deploy.exportdir import load_export
    from selfish_deploy.rundir import load_run
    from selfish_deploy.runtime import SparseLM

    run_dir, export_dir = on_lstm_run
    run, exported = load_run(run_dir), load_export(export_dir)
    assert run.config["model"]["arch"] == "on_lstm"
    assert set(exported.sparse) == {"encoder.weight", "rnn.cells.0.ih.0.weight", "rnn.cells.0.hh.weight",
                                    "rnn.cells.1.ih.0.weight", "rnn.cells.1.hh.weight"}
    for name, mask in run.masks.items():  # the CSR holds exactly the masked weights, W_hh included
        assert torch.equal(exported.sparse[name].mask(), mask)
    # the card's per-gate table splits the rows as the cell stacks them: 4 rows per master gate, 20 per gate
    card = (export_dir / "README.md").read_text()
    assert "| `rnn.cells.0.hh.weight` | master_i | 4 |" in card and "| `rnn.cells.0.hh.weight` | f | 20 |" in card
    model = run.build_model().eval()
    tokens = torch.randint(0, len(run.vocab), (9, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, ref_state = model(tokens, model.init_hidden(3))
    for backend in ("sparse", "dense", "onnx"):
        lm = SparseLM.load(export_dir, backend=backend)
        out, state = lm.forward(tokens)
        assert rel_err(out, ref) < 1e-5, backend
        for (h, c), (rh, rc) in zip(state, ref_state, strict=True):
            assert rel_err(h, rh) < 1e-5 and rel_err(c, rc) < 1e-5, backend
        # one token at a time through the returned state equals the whole sequence
        st, steps = None, []
        for t in range(tokens.size(0)):
            o, st = lm.forward(tokens[t:t + 1], st)
            steps.append(o)
        assert rel_err(torch.cat(steps), ref) < 1e-5, backend


def test_trained_run_is_served(on_lstm_run):
    from fastapi.testclient import TestClient

    from selfish_deploy.rundir import load_run
    from selfish_deploy.runtime import SparseLM
    from selfish_deploy.serving.app import create_app

    run_dir, export_dir = on_lstm_run
    lm = SparseLM.load(export_dir)
    text = "the company said it expects higher sales"
    with TestClient(create_app(lm, "on-lstm")) as client:
        assert client.get("/health").json()["arch"] == "on_lstm"
        r = client.post("/v1/score", json={"text": text})
        assert r.status_code == 200, r.text
        g = client.post("/v1/generate", json={"prompt": "the", "max_new_tokens": 5, "temperature": 0})
        assert g.status_code == 200 and len(g.json()["tokens"]) == 5
    model = load_run(run_dir).build_model().eval()
    ids = lm.vocab.encode(text, add_eos=True)
    with torch.no_grad():
        logp, _ = model(torch.tensor([lm.vocab.eos_id] + ids[:-1]).view(-1, 1), model.init_hidden(1))
    ref = logp[:, 0].gather(1, torch.tensor(ids).view(-1, 1)).view(-1)
    assert rel_err(torch.tensor(r.json()["logprobs"]), ref) < 1e-5


def test_cli_refuses_a_chunk_size_that_does_not_divide_the_widths(data_dir, tmp_path, capsys):
    from selfish_deploy.training.cli import main

    code = main(["--data-dir", str(data_dir), "--corpus", "ptb-tiny", "--arch", "on_lstm", "--hidden", "20",
                 "--emb", "10", "--chunk-size", "3", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a multiple of chunk_size 3" in err[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runtime_and_training_step_equal_cpu(on_lstm_run):
    from selfish_deploy.rundir import load_run
    from selfish_deploy.runtime import SparseLM

    run_dir, export_dir = on_lstm_run
    tokens = torch.randint(0, 50, (7, 3), generator=torch.Generator().manual_seed(0))
    cpu, gpu = SparseLM.load(export_dir), SparseLM.load(export_dir, device="cuda")
    assert rel_err(gpu.forward(tokens)[0].cpu(), cpu.forward(tokens)[0]) < 1e-5
    # one training-mode forward and backward on the device, dropouts off: the same loss and gradients
    model = load_run(run_dir).build_model()
    grads = []
    for device in ("cpu", "cuda"):
        m = model.to(device).train()
        for cell in m.rnn.cells:
            cell.hh.dropout = 0.0
        m.rnn.dropout = m.rnn.dropouti = m.rnn.dropouth = m.rnn.dropoute = 0.0
        m.zero_grad()
        logp, _ = m(tokens.to(device), m.init_hidden(3))
        logp[..., 0].mean().backward()
        grads.append(m.rnn.cells[0].hh.weight.grad.cpu())
    assert rel_err(grads[1], grads[0]) < 1e-4


@pytest.mark.skipif(not kernels.compiled_available(), reason="compiled kernels not built")
def test_one_call_step_equals_the_general_path(on_lstm_run):
    """A generation step goes through the compiled one-call step (OnlstmStep): bit for bit the numbers and
    state of embed + spmm + onlstm_recurrent + decoder; a state in another layout falls back to that path."""
    from conftest import assert_one_call_step_is_the_general_path

    from selfish_deploy.runtime import SparseLM

    lm = SparseLM.load(on_lstm_run[1])
    assert_one_call_step_is_the_general_path(lm, tokens=(0, 7, len(lm.vocab) - 1))
