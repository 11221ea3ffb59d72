"""The mixture-of-softmaxes decoder (families/mos.py): the module against explicit softmaxes, the sparse runtime
head and the ONNX head against the module."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from selfish_deploy import kernels
from selfish_deploy.csr import CSR
from selfish_deploy.families import mos
from selfish_deploy.kernels import Matrix, Reference, kernels_for

TOL = 1e-5


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def make_decoder(n_in=6, emb=5, vocab=11, experts=3, seed=0, scale=1.0, mixture="floor"):
    """``scale`` multiplies the vocabulary projection and the prior: logits of hundreds at 1000."""
    torch.manual_seed(seed)
    dec = mos.MoSDecoder(n_in, emb, vocab, experts, dropoutl=0.3, mixture=mixture).eval()
    with torch.no_grad():
        dec.bias.uniform_(-0.1, 0.1)  # not all zero, so that the bias is exercised
        dec.weight.mul_(scale)
        dec.prior.weight.mul_(scale ** 0.5)
    return dec


def explicit(dec: mos.MoSDecoder, h: torch.Tensor) -> torch.Tensor:
    """p(w | h) for (N, n_in) in float64, one softmax per expert, written out as in the paper (eq. 4)."""
    d = {n: p.detach().double() for n, p in dec.named_parameters()}
    h = h.double()
    K, E = dec.experts, dec.emb
    latent = torch.tanh(h @ d["latent.weight"].t() + d["latent.bias"])  # (N, K*E)
    prior = torch.softmax(h @ d["prior.weight"].t(), dim=1)  # (N, K)
    p = torch.zeros(h.shape[0], dec.vocab_size, dtype=torch.float64)
    for k in range(K):
        logits = latent[:, k * E:(k + 1) * E] @ d["weight"].t() + d["bias"]
        p += prior[:, k:k + 1] * torch.softmax(logits, dim=1)
    return p


def test_mixture_equals_a_hand_computation():
    """floor (the default, zihangdai/mos's): log(p + 1e-8), probabilities summing to 1 + V * 1e-8; exact: log p,
    summing to 1."""
    h = torch.randn(4, 2, 6)
    for mixture, floor in (("floor", 1e-8), ("exact", 0.0)):
        dec = make_decoder(mixture=mixture)
        with torch.no_grad():
            logp = dec(h)
        assert logp.shape == (4, 2, 11)
        p = explicit(dec, h.view(-1, 6)).view(4, 2, 11)
        assert rel_err(logp, torch.log(p + floor)) < TOL, mixture
        assert torch.allclose(logp.exp().sum(-1).double(), torch.full((4, 2), 1 + 11 * floor, dtype=torch.float64),
                              atol=1e-6)
    assert make_decoder().mixture == "floor"
    with pytest.raises(ValueError, match="mixture"):
        make_decoder(mixture="log")


def test_floor_is_the_authors_formula():
    """zihangdai/mos model.py's forward, written out: softmax per expert, weighted by the prior, summed,
    log(prob.add_(1e-8)); ours in float32 equals it computed the same way in float32, bit for bit or nearly."""
    dec = make_decoder(n_in=12, emb=8, vocab=50, experts=4)
    h = torch.randn(7, 3, 12)
    with torch.no_grad():
        latent = dec.latent(h).tanh()
        logit = torch.nn.functional.linear(latent.view(-1, 8), dec.weight, dec.bias)
        prior = torch.softmax(dec.prior(h).contiguous().view(-1, 4), -1)
        prob = torch.softmax(logit.view(-1, 50), -1).view(-1, 4, 50)
        prob = (prob * prior.unsqueeze(2).expand_as(prob)).sum(1)
        theirs = torch.log(prob.add_(1e-8)).view(7, 3, 50)
        assert torch.allclose(dec(h), theirs, rtol=0, atol=1e-6)


def test_stable_at_large_logits():
    """Logits in the thousands: the mixture of fp32 softmaxes underflows for unlikely words. exact stays finite
    and equal to a float64 log-space computation; floor gives log(1e-8) there, as theirs, and equals
    log(p64 + 1e-8) everywhere."""
    h = torch.randn(8, 1, 6)
    dec = make_decoder(scale=1000.0, mixture="exact")
    with torch.no_grad():
        logp = dec(h).view(8, -1)
        naive_p = explicit(dec, h.view(8, 6)).float()  # fp32 probabilities, as a softmax mixture would give
    assert (naive_p == 0).any(), "the test needs words whose fp32 probability underflows"
    assert torch.isfinite(logp).all()
    d = {n: p.detach().double() for n, p in dec.named_parameters()}
    h64 = h.view(8, 6).double()
    latent = torch.tanh(h64 @ d["latent.weight"].t() + d["latent.bias"]).view(8, 3, 5)
    ref = torch.logsumexp(torch.log_softmax(latent @ d["weight"].t() + d["bias"], -1)
                          + torch.log_softmax(h64 @ d["prior.weight"].t(), -1).unsqueeze(-1), dim=1)
    assert rel_err(logp, ref) < TOL
    dec = make_decoder(scale=1000.0)
    with torch.no_grad():
        logp = dec(h).view(8, -1)
    assert rel_err(logp, torch.log(ref.exp() + 1e-8)) < TOL
    assert (logp[naive_p == 0] == torch.tensor(1e-8).log()).all()


@pytest.mark.parametrize("mixture", mos.MIXTURES)
def test_one_expert_is_a_softmax_over_a_tanh_projection(mixture):
    dec = make_decoder(experts=1, mixture=mixture)
    h = torch.randn(3, 4, 6)
    with torch.no_grad():
        expected = torch.log_softmax(torch.tanh(dec.latent(h)) @ dec.weight.t() + dec.bias, dim=-1)
        if mixture == "floor":
            expected = torch.log(expected.exp() + 1e-8)
        assert torch.allclose(dec(h), expected, atol=1e-6)


def test_latent_dropout_is_locked_over_time_and_off_in_eval():
    x = torch.ones(7, 3, 40)
    torch.manual_seed(0)
    y = mos.locked_dropout(x, 0.5, training=True)
    assert torch.equal(y, y[:1].expand_as(y))  # one mask per (batch, feature), every step the same
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(mos.locked_dropout(x, 0.5, training=False), x)
    dec = make_decoder()
    h = torch.randn(5, 2, 6)
    with torch.no_grad():
        eval_out = dec(h)
        dec.train()
        assert not torch.allclose(dec(h), eval_out)


def test_tied_projection_shares_the_embedding_and_names():
    emb = torch.nn.Embedding(11, 5)
    dec = make_decoder()
    dec.weight = emb.weight
    assert dec.weight is emb.weight
    shapes = mos.parameter_shapes(6, 5, 11, 3, tie_weights=True)
    assert shapes == {"decoder.latent.weight": (15, 6), "decoder.latent.bias": (15,),
                      "decoder.prior.weight": (3, 6), "decoder.bias": (11,)}
    untied = mos.parameter_shapes(6, 5, 11, 3, tie_weights=False)
    assert untied["decoder.weight"] == (11, 5)
    own = {"decoder." + n: tuple(p.shape) for n, p in make_decoder().named_parameters()}
    assert list(own.items()) == list(untied.items())  # named_parameters order too
    assert mos.sparse_names(True) == ["decoder.latent.weight", "decoder.prior.weight"]
    assert "decoder.weight" in mos.sparse_names(False)
    assert not [n for n in mos.sparse_names(False) if "bias" in n]


def test_registered_decoder_defaults_to_fifteen_tied_experts():
    from selfish_deploy.model import ModelConfig, build_model

    cfg = ModelConfig(arch="lstm", vocab_size=30, emb=4, hidden=6, decoder="mos")
    assert cfg.experts == 15 and ModelConfig.from_dict(cfg.to_dict()).experts == 15  # config.json says 15
    model = build_model(cfg)
    assert isinstance(model.decoder, mos.MoSDecoder) and model.decoder.prior.weight.shape == (15, 4)
    assert model.decoder.weight is model.encoder.weight
    assert "decoder.weight" not in dict(model.named_parameters())
    assert model.decoder.dropoutl == 0.29
    assert cfg.option("mixture") == model.decoder.mixture == "floor"  # zihangdai/mos's, by default
    exact = ModelConfig.from_dict(ModelConfig(arch="lstm", vocab_size=30, emb=4, hidden=6, decoder="mos",
                                              options={"mixture": "exact"}).to_dict())
    assert build_model(exact).decoder.mixture == "exact"


# ---- the sparse runtime head -----------------------------------------------------------------------------

def random_mask(shape, nnz, g):
    mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
    mask[torch.randperm(mask.numel(), generator=g)[:nnz]] = True
    return mask.view(shape)


def sparse_decoder(density: float, seed: int = 0, tie: bool = True, experts: int = 4, mixture: str = "floor"):
    """A decoder whose weights are masked at ``density``, and the export-like accessors of its tensors."""
    dec = make_decoder(n_in=12, emb=8, vocab=50, experts=experts, seed=seed, mixture=mixture)
    g = torch.Generator().manual_seed(seed)
    stored = {}
    with torch.no_grad():
        for n in ("latent.weight", "prior.weight", "weight"):
            p = getattr(dec, n.split(".")[0]).weight if "." in n else dec.weight
            mask = random_mask(tuple(p.shape), max(1, round(density * p.numel())), g)
            p.mul_(mask)
            full = "encoder.weight" if (n == "weight" and tie) else "decoder." + n
            stored[full] = p.detach().clone() if density == 1.0 else CSR.from_masked(p.detach(), mask)
    stored["decoder.latent.bias"] = dec.latent.bias.detach().clone()
    stored["decoder.bias"] = dec.bias.detach().clone()

    def matrix(name):
        w = stored[name]
        return Matrix(csr=w) if isinstance(w, CSR) else Matrix(dense=w)

    def vector(name):
        return stored[name].float().contiguous()

    return dec, matrix, vector


def exported(tie: bool, experts: int = 4, emb: int = 8, mixture: str = "floor"):
    """What the head reads of an ``ExportedModel``: its model config."""
    options = {"mixture": mixture}
    return SimpleNamespace(model_config=SimpleNamespace(tie_weights=tie, experts=experts, emb=emb,
                                                        option=options.__getitem__))


def kernel_sets():
    sets = [Reference()]
    if kernels.compiled_available():
        k = kernels_for("cpu", 2)
        sets.append(k)
    return sets


@pytest.mark.parametrize("density", [0.05, 0.33, 1.0])
@pytest.mark.parametrize("n", [1, 3, 64])
@pytest.mark.parametrize("which", ["reference", "compiled"])
@pytest.mark.parametrize("mixture", mos.MIXTURES)
def test_runtime_head_equals_the_module(density, n, which, mixture):
    ks = {k.name if k.name == "reference" else "compiled": k for k in kernel_sets()}
    if which not in ks:
        pytest.skip("compiled kernels not built")
    k = ks[which]
    if which == "compiled":
        k.set_min_work(0)  # multithreaded even on these small matrices
    try:
        for tie in (True, False):
            dec, matrix, vector = sparse_decoder(density, seed=n, tie=tie, mixture=mixture)
            head = mos.SparseMoSHead(exported(tie, mixture=mixture), matrix, vector, k)
            h = torch.randn(n, 12)
            with torch.no_grad():
                expected = dec(h.unsqueeze(1)).squeeze(1)  # (N, V)
            targets = torch.randint(0, 50, (n,))
            full = head(h.t().contiguous(), targets, full=True, top1=True)
            assert rel_err(full["logprobs"], expected) < TOL
            assert torch.equal(full["argmax"], full["logprobs"].argmax(1))
            assert torch.equal(full["max_lp"], full["logprobs"].max(1).values)
            assert torch.equal(full["target_lp"], full["logprobs"].gather(1, targets.view(-1, 1)).view(-1))
            # scoring path: no (K*N, V) tensor, the same numbers
            scored = head(h.t().contiguous(), targets)
            assert set(scored) == {"target_lp"}
            assert rel_err(scored["target_lp"], expected.gather(1, targets.view(-1, 1)).view(-1)) < TOL
            top = head(h.t().contiguous(), top1=True)
            assert torch.equal(top["argmax"], expected.argmax(1))
    finally:
        if which == "compiled":
            k.set_min_work(32768)


def test_runtime_head_with_fifteen_experts_and_a_larger_vocabulary():
    """The default 15 experts over 3,000 words, compiled kernels when built: still < 1e-5."""
    torch.manual_seed(5)
    dec = mos.MoSDecoder(40, 32, 3000, 15).eval()
    g = torch.Generator().manual_seed(5)
    stored = {"decoder.latent.bias": dec.latent.bias.detach(), "decoder.bias": dec.bias.detach().uniform_(-1, 1)}
    with torch.no_grad():
        for name, p in (("decoder.latent.weight", dec.latent.weight), ("decoder.prior.weight", dec.prior.weight),
                        ("encoder.weight", dec.weight)):
            mask = random_mask(tuple(p.shape), round(0.45 * p.numel()), g)
            p.mul_(mask)
            stored[name] = CSR.from_masked(p.detach(), mask)
    cfg = exported(True, experts=15, emb=32)
    h = torch.randn(64, 40)
    with torch.no_grad():
        expected = dec(h.unsqueeze(1)).squeeze(1)
    targets = torch.randint(0, 3000, (64,))
    for k in kernel_sets():
        head = mos.SparseMoSHead(cfg, lambda n: Matrix(csr=stored[n]), lambda n: stored[n].float().contiguous(), k)
        assert rel_err(head(h.t().contiguous(), full=True)["logprobs"], expected) < TOL
        assert rel_err(head(h.t().contiguous(), targets)["target_lp"],
                       expected.gather(1, targets.view(-1, 1)).view(-1)) < TOL


def test_runtime_head_chunks_the_full_mixture(monkeypatch):
    """Positions beyond one chunk give the same log-probabilities as one chunk."""
    dec, matrix, vector = sparse_decoder(0.33)
    head = mos.SparseMoSHead(exported(True), matrix, vector, Reference())
    x = torch.randn(12, 10)
    whole = head(x, full=True)["logprobs"]
    monkeypatch.setattr(mos, "_FULL_CHUNK_VALUES", 4 * 50 * 3)  # 3 positions per chunk
    assert torch.allclose(head(x, full=True)["logprobs"], whole, atol=1e-6)


def test_runtime_head_rejects_mismatched_shapes():
    dec, matrix, vector = sparse_decoder(0.33)
    with pytest.raises(ValueError, match="experts"):
        mos.SparseMoSHead(exported(True, experts=3), matrix, vector, Reference())


# ---- the ONNX head ---------------------------------------------------------------------------------------

class _G:
    """The smallest graph builder with the ``node``/``const`` interface of export/onnx_graph.OnnxGraph."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output + "/" + op, **attrs))
        return output

    def const(self, name, array):
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name


def run_onnx_head(dec: mos.MoSDecoder, h: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    g = _G()
    names = {}
    for n, p in dec.named_parameters():
        names[n] = g.const("decoder." + n, p.detach().numpy())
    out = mos.onnx_head(g, "x", names["latent.weight"], names["latent.bias"], names["prior.weight"],
                        names["weight"], names["bias"], dec.experts, dec.emb, dec.vocab_size, dec.mixture)
    graph = helper.make_graph(g.nodes, "mos", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", dec.n_in])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", dec.vocab_size])],
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    import onnx

    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([out], {"x": h.numpy()})[0]


@pytest.mark.parametrize("scale", [1.0, 1000.0])
@pytest.mark.parametrize("mixture", mos.MIXTURES)
def test_onnx_head_equals_pytorch(scale, mixture):
    pytest.importorskip("onnxruntime")
    dec = make_decoder(n_in=12, emb=8, vocab=50, experts=4, scale=scale, mixture=mixture)
    h = torch.randn(9, 12)
    with torch.no_grad():
        expected = dec(h.unsqueeze(1)).squeeze(1)
    got = torch.from_numpy(run_onnx_head(dec, h))
    assert torch.isfinite(got).all()
    assert rel_err(got, expected) < TOL


# ---- end to end: train -> export -> SparseLM / ONNX ------------------------------------------------------

TINY_MOS = ["--corpus", "ptb-tiny", "--arch", "awd_lstm", "--decoder", "mos", "--experts", "3", "--layers", "2",
            "--hidden", "24", "--emb", "16", "--last-hidden", "20", "--density", "0.3", "--method", "selfish",
            "--batch-size", "20", "--bptt", "20", "--seed", "7", "--log-interval", "1000"]


@pytest.fixture(scope="module")
def mos_run(tmp_path_factory, data_dir):
    """Two short epochs (a topology update in between) of a tiny sparse AWD-LSTM-MoS, through the CLI."""
    from selfish_deploy.training.cli import main

    out = tmp_path_factory.mktemp("mos") / "run"
    assert main([*TINY_MOS, "--data-dir", str(data_dir), "--epochs", "2", "--max-batches", "3",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def mos_export(tmp_path_factory, mos_run):
    from selfish_deploy.export.cli import main

    out = tmp_path_factory.mktemp("mos-export") / "export"
    assert main([str(mos_run), "--out", str(out), "--onnx"]) == 0
    return out


def eval_model(run_dir, dtype=None):
    """The run's PyTorch model in eval mode; ``dtype``: weight matrices rounded as the export stores them."""
    from selfish_deploy.rundir import load_run

    model = load_run(run_dir).build_model().eval()
    if dtype is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.copy_(p.to(dtype).float())
    return model


def test_run_is_a_sparse_mos_model(mos_run, mos_export):
    from selfish_deploy.exportdir import load_export
    from selfish_deploy.rundir import load_run

    cfg = load_run(mos_run).model_config
    assert (cfg.decoder, cfg.experts, cfg.option("dropoutl"), cfg.option("last_hidden")) == ("mos", 3, 0.29, 20)
    exported = load_export(mos_export)
    assert {"encoder.weight", "decoder.latent.weight", "decoder.prior.weight"} <= set(exported.sparse)
    assert {"decoder.bias", "decoder.latent.bias"} <= set(exported.dense)
    assert "decoder.weight" not in exported.sparse and "decoder.weight" not in exported.dense  # tied
    for n in ("decoder.latent.weight", "decoder.prior.weight"):
        csr = exported.sparse[n]
        assert csr.nnz == round(0.3 * csr.shape[0] * csr.shape[1])  # the exact non-zero count, after updates


def test_runtime_equals_the_eval_forward(mos_run, mos_export):
    from selfish_deploy.runtime import SparseLM

    model = eval_model(mos_run)
    tokens = torch.randint(0, model.config.vocab_size, (9, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = model(tokens, model.init_hidden(3))
    V = model.config.vocab_size  # floor, the default: probabilities sum to 1 + V * 1e-8
    assert model.config.option("mixture") == "floor"
    assert torch.allclose(ref.exp().sum(-1).double(), torch.full((9, 3), 1 + V * 1e-8, dtype=torch.float64),
                          atol=2e-6)
    for backend in ("sparse", "dense", "onnx"):
        logp, _ = SparseLM.load(mos_export, backend=backend).forward(tokens)
        assert rel_err(logp, ref) < TOL, backend
    lm = SparseLM.load(mos_export)
    seq = tokens[:, 0].tolist()
    scored = lm.score_ids([seq], top_logprobs=1)[0]
    want = ref[:-1, 0].gather(1, tokens[1:, :1]).view(-1)
    assert rel_err(torch.tensor(scored.logprobs), want) < TOL


def test_batched_scores_are_one_at_a_time_bit_for_bit(mos_export):
    """The engine's promise (README, Exactness) holds with the mixture: every op of the head is per column."""
    from selfish_deploy.runtime import SparseLM

    lm = SparseLM.load(mos_export)
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, lm.config.vocab_size, (n,), generator=g).tolist() for n in (12, 5, 30, 7, 19)]
    alone = [lm.score_ids([s], top_logprobs=1)[0] for s in seqs]
    batch = lm.score_ids(seqs, top_logprobs=1)
    for a, b in zip(alone, batch, strict=True):
        assert a.logprobs == b.logprobs and a.top == b.top and a.top is not None


def test_served_scores_equal_the_eval_forward(mos_run, mos_export):
    from fastapi.testclient import TestClient

    from selfish_deploy.runtime import SparseLM
    from selfish_deploy.serving.app import create_app

    lm = SparseLM.load(mos_export)
    text = "the company said it expects higher sales"
    with TestClient(create_app(lm, "mos")) as client:
        r = client.post("/v1/score", json={"text": text})
        assert r.status_code == 200, r.text
    model = eval_model(mos_run)
    ids = lm.vocab.encode(text, add_eos=True)
    inputs = torch.tensor([lm.vocab.eos_id] + ids[:-1]).view(-1, 1)
    with torch.no_grad():
        logp, _ = model(inputs, model.init_hidden(1))
    ref = logp[:, 0].gather(1, torch.tensor(ids).view(-1, 1)).view(-1)
    assert rel_err(torch.tensor(r.json()["logprobs"]), ref) < TOL


def test_onnx_equals_pytorch_with_state(mos_run, mos_export):
    from selfish_deploy.export.onnx_runner import OnnxLM

    model = eval_model(mos_run)
    tokens = torch.randint(0, model.config.vocab_size, (7, 2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, ref_state = model(tokens, model.init_hidden(2))
    logp, state = OnnxLM.load(mos_export, threads=1).forward(tokens.t().numpy())  # [batch, seq]
    assert rel_err(torch.from_numpy(logp).transpose(0, 1), ref) < TOL
    h, c = state[-1]
    assert torch.allclose(torch.from_numpy(h), ref_state[-1][0], atol=1e-5)


def test_fp16_export_equals_the_rounded_model(mos_run, tmp_path):
    """fp16 values as stored, in the sparse runtime and in an ONNX graph with sparse initializers."""
    from selfish_deploy.export.cli import main
    from selfish_deploy.export.onnx_runner import OnnxLM
    from selfish_deploy.runtime import SparseLM

    out = tmp_path / "fp16"
    assert main([str(mos_run), "--out", str(out), "--dtype", "fp16", "--onnx", "--onnx-sparse-initializers"]) == 0
    model = eval_model(mos_run, torch.float16)
    tokens = torch.randint(0, model.config.vocab_size, (5, 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, _ = model(tokens, model.init_hidden(2))
    logp, _ = SparseLM.load(out).forward(tokens)
    assert rel_err(logp, ref) < TOL
    onnx_logp, _ = OnnxLM.load(out, threads=1).forward(tokens.t().numpy())
    assert rel_err(torch.from_numpy(onnx_logp).transpose(0, 1), ref) < TOL


@pytest.mark.parametrize("flags,message", [
    (["--experts", "-1"], "experts"),
    (["--dropoutl", "1.5"], "dropoutl"),
    (["--decoder", "softmax", "--dropoutl", "0.2"], "dropoutl"),
    (["--mixture", "log"], "mixture"),
])
def test_bad_mos_flags_exit_2(tmp_path, capsys, flags, message):
    from selfish_deploy.training.cli import main

    args = [a for a in TINY_MOS]
    assert main([*args, *flags, "--out", str(tmp_path / "run"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_gpu_recipe_is_the_authors_wikitext2_model():
    """wt2-awd-lstm-mos builds zihangdai/mos's WikiText-2 model: 35M parameters (Yang et al. 2018, Table 2)."""
    from selfish_deploy.families import parameter_shapes
    from selfish_deploy.model import ModelConfig
    from selfish_deploy.training.config import TrainConfig, load_recipe

    cfg = TrainConfig.from_dict(load_recipe("wt2-awd-lstm-mos"))
    model = ModelConfig(arch=cfg.arch, vocab_size=33278, emb=cfg.emb, hidden=cfg.hidden, layers=cfg.layers,
                        dropout=cfg.dropout, tie_weights=cfg.tie_weights, decoder=cfg.decoder,
                        experts=cfg.experts, options=cfg.options)
    shapes = parameter_shapes(model)
    assert shapes["decoder.latent.weight"] == (15 * 300, 650)
    assert shapes["rnns.2.weight_hh_l0"] == (4 * 650, 650)
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert 34.5e6 < total < 35.5e6


@pytest.mark.skipif(not kernels.compiled_available(), reason="compiled kernels not built")
def test_one_call_trunk_step_then_the_head_equals_the_general_path(mos_export):
    """A generation step runs the trunk in one compiled call (StackStep without a decoder), then the MoS head
    on the last layer's h: bit for bit the general path's numbers and state."""
    from conftest import assert_one_call_step_is_the_general_path

    from selfish_deploy.runtime import SparseLM

    lm = SparseLM.load(mos_export)
    assert lm.backend.step.vocab == 0  # the trunk only
    assert_one_call_step_is_the_general_path(lm, tokens=(0, 5, len(lm.vocab) - 1), seed=2)
