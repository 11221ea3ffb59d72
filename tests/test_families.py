"""The family registry: every registered family x decoder trains a step, exports, keeps its declared tensors,
and its sparse-runtime and ONNX paths equal the PyTorch model; nothing outside ``families/`` dispatches on
the family's name.

Relative error is ``max|a - b| / max|b|`` with ``b`` the PyTorch model's eval forward.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from selfish_deploy import kernels
from selfish_deploy.csr import CSR
from selfish_deploy.errors import UserError
from selfish_deploy.export.onnx_runner import OnnxLM
from selfish_deploy.export.writer import export_run
from selfish_deploy.exportdir import load_export
from selfish_deploy.families import (ALL, DECODERS, FAMILIES, Option, gate_blocks, get_decoder, get_family,
                                     sparse_names)
from selfish_deploy.masks import MaskRegistry
from selfish_deploy.model import ModelConfig, build_model
from selfish_deploy.rundir import load_run
from selfish_deploy.runtime.state import State
from selfish_deploy.training.plots import plot_gate_density

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5
COMBOS = list(itertools.product(FAMILIES, DECODERS))
IDS = [f"{f}-{d}" for f, d in COMBOS]
# Widths every family accepts (ON-LSTM's chunks of 10 divide them); small enough for seconds per combination.
EMB, HIDDEN, LAYERS = 10, 20, 2


def relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def tiny(arch: str, decoder: str, tie: bool = True, vocab_size: int = 31) -> ModelConfig:
    return ModelConfig(arch=arch, decoder=decoder, vocab_size=vocab_size, emb=EMB, hidden=HIDDEN, layers=LAYERS,
                       tie_weights=tie)


def flat(state) -> list[torch.Tensor]:
    return [t for layer in state for t in (layer if isinstance(layer, tuple) else (layer,))]


def random_state(model, batch: int, gen: torch.Generator) -> list:
    return [tuple(torch.rand(t.shape, generator=gen) - 0.5 for t in s) if isinstance(s, tuple)
            else torch.rand(s.shape, generator=gen) - 0.5 for s in model.init_hidden(batch)]


# --- the entries agree with the modules they build ---------------------------------------------------------

@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch,decoder", COMBOS, ids=IDS)
def test_declared_tensors_are_the_modules(arch, decoder, tie):
    cfg = tiny(arch, decoder, tie)
    model = build_model(cfg)
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert cfg.parameter_shapes() == params and list(cfg.parameter_shapes()) == list(params)
    # as the authors': every weight matrix is sparse (embedding and decoder included), biases dense
    assert set(sparse_names(cfg)) == {n for n, s in params.items() if len(s) == 2}
    assert "encoder.weight" in sparse_names(cfg) and ("decoder.weight" in params) != tie
    masks = MaskRegistry(model, 0.5, generator=torch.Generator().manual_seed(0))
    assert list(masks.masks) == [n for n in params if n in set(sparse_names(cfg))]  # named_parameters order
    family = get_family(arch)
    assert masks.trunk_names() == [n for n in masks.masks if n.startswith(family.module_name + ".")]
    assert masks.trunk_names(), "a trunk without a sparse tensor"
    for name in masks.masks:
        blocks = gate_blocks(name, cfg)
        assert blocks and len(set(blocks)) == len(blocks) and params[name][0] % len(blocks) == 0, (name, blocks)
        assert len(masks.gate_densities(name)) == len(blocks)
        if not name.startswith(family.module_name + "."):
            assert blocks == ALL
    assert all(g in family.gate_labels or g == "all" for n in masks.trunk_names() for g in gate_blocks(n, cfg)) \
        or not family.gate_labels


@pytest.mark.parametrize("arch,decoder", COMBOS, ids=IDS)
def test_forward_gives_log_probabilities_and_the_declared_state(arch, decoder):
    cfg = tiny(arch, decoder)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    state = model.init_hidden(3)
    layout = get_family(arch).state_layout(cfg)
    assert len(state) == len(layout) == len(get_family(arch).init_state(cfg, 3))
    for s, parts in zip(state, layout):
        tensors = s if isinstance(s, tuple) else (s,)
        assert [tuple(t.shape) for t in tensors] == [(3, w) for _, w in parts]
    with torch.no_grad():
        logp, new = model(torch.randint(0, cfg.vocab_size, (4, 3)), state)
    assert logp.shape == (4, 3, cfg.vocab_size)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(4, 3), atol=1e-5)
    assert [t.shape for t in flat(new)] == [t.shape for t in flat(state)]


# --- train one step, export, run: every family x decoder ----------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """combination -> (run dir, export dir): a real selfish run on ptb-tiny (two one-batch epochs, so one
    topology update after validation), exported with ONNX. The run's PNG plots are skipped (most of a tiny
    run's time; test_plots covers them, and the gate plot is drawn below from the run's records)."""
    from selfish_deploy.training import trainer
    from selfish_deploy.training.cli import main

    done = {}

    def get(arch: str, decoder: str):
        if (arch, decoder) not in done:
            root = tmp_path_factory.mktemp(f"{arch}-{decoder}")
            args = ["--corpus", "ptb-tiny", "--data-dir", str(data_dir), "--arch", arch, "--decoder", decoder,
                    "--layers", str(LAYERS), "--hidden", str(HIDDEN), "--emb", str(EMB), "--method", "selfish",
                    "--density", "0.5", "--epochs", "2", "--dry-run", "--batch-size", "4", "--bptt", "6",
                    "--eval-batch-size", "4", "--seed", "3", "--out", str(root / "run")]
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(trainer, "plot_run", lambda *args, **kwargs: [])
                assert main(args) == 0
            export_run(root / "run", root / "export", onnx=True)
            done[arch, decoder] = root / "run", root / "export"
        return done[arch, decoder]

    return get


def pytorch_reference(run_dir, T: int = 5, B: int = 3, seed: int = 4):
    gen = torch.Generator().manual_seed(seed)
    model = load_run(run_dir).build_model()
    tokens = torch.randint(0, model.config.vocab_size, (T, B), generator=gen)
    state = random_state(model, B, gen)
    with torch.no_grad():
        logp, new = model(tokens, state)
    return tokens, state, logp, new


@pytest.mark.parametrize("arch,decoder", COMBOS, ids=IDS)
def test_trains_and_exports_the_declared_sparse_tensors(trained, arch, decoder):
    run_dir, export_dir = trained(arch, decoder)
    run, exported = load_run(run_dir), load_export(export_dir)
    cfg = exported.model_config
    assert (cfg.arch, cfg.decoder) == (arch, decoder) and cfg == run.model_config
    assert set(run.masks) == set(sparse_names(cfg)) == set(exported.sparse)  # density 0.5: all CSR
    info = exported.tensor_info()
    for name in exported.sparse:
        assert exported.sparse[name].nnz == int(run.masks[name].sum())
        assert torch.equal(exported.sparse[name].to_dense(), run.weights[name])
        assert len(info[name]["gates"]) == len(gate_blocks(name, cfg))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    topology = [r for r in records if r.get("event") == "topology"]
    assert topology, "no topology update ran"
    assert set(topology[0]["gates"]) == set(run.masks)  # per-gate density of every sparse tensor
    assert set(records[0]["gates"]) == set(MaskRegistry(run.build_model(), 1.0).trunk_names())  # the plot's
    if decoder == next(iter(DECODERS)):  # the gate plot, once per family, with its block names
        assert plot_gate_density(records, run_dir / "plots", cfg).is_file()
    card = (export_dir / "README.md").read_text()
    assert get_family(arch).title in card


@pytest.mark.parametrize("arch,decoder", COMBOS, ids=IDS)
def test_onnx_equals_pytorch(trained, arch, decoder):
    run_dir, export_dir = trained(arch, decoder)
    tokens, state, ref, ref_state = pytorch_reference(run_dir)
    onnx = OnnxLM.load(export_dir, threads=1)
    assert onnx.one_step == get_family(arch).onnx_one_step
    grouped = [tuple(t.numpy() for t in s) if isinstance(s, tuple) else s.numpy() for s in state]
    logp, new = onnx.forward(tokens.t().numpy(), grouped)
    assert relerr(torch.from_numpy(logp), ref.transpose(0, 1)) < TOL
    for got, want in zip(flat(new), flat(ref_state), strict=True):
        assert relerr(torch.from_numpy(got), want) < TOL
    # token by token from the returned state: the same numbers
    steps, s = [], grouped
    for t in range(tokens.shape[0]):
        lp, s = onnx.forward(tokens[t:t + 1].t().numpy(), s)
        steps.append(lp)
    assert relerr(torch.from_numpy(np.concatenate(steps, axis=1)), ref.transpose(0, 1)) < TOL


def sparse_forward(exported, tokens, state):
    """The registry's runtime contract: the family's ``sparse_trunk`` and the decoder's ``sparse_head`` on the
    CPU kernels (what the sparse backend composes)."""
    cfg = exported.model_config
    ops = kernels.kernels_for("cpu", 1)
    cache = {}

    def matrix(name):
        if name not in cache:
            w = exported.weight(name)
            cache[name] = kernels.Matrix(csr=w) if isinstance(w, CSR) else kernels.Matrix(dense=w)
        return cache[name]

    def vector(name):
        return exported.dense[name].float().contiguous()

    family, head = get_family(cfg.arch), get_decoder(cfg.decoder)
    trunk = family.sparse_trunk(exported, matrix, vector, ops)
    x, new = trunk(tokens, State(state))
    out = head.sparse_head(exported, matrix, vector, ops)(x.contiguous(), full=True)
    return out["logprobs"].view(*tokens.shape, -1), new


@pytest.mark.parametrize("arch,decoder", COMBOS, ids=IDS)
def test_sparse_runtime_contract_equals_pytorch(trained, arch, decoder):
    run_dir, export_dir = trained(arch, decoder)
    tokens, state, ref, ref_state = pytorch_reference(run_dir)
    logp, new = sparse_forward(load_export(export_dir), tokens, state)
    assert relerr(logp, ref) < TOL
    for got, want in zip(flat(new), flat(ref_state), strict=True):
        assert relerr(got, want) < TOL


# --- registry mechanics: options, one-step ONNX graphs --------------------------------------------------------

@pytest.fixture
def with_family(monkeypatch):
    """Register a variant of a stacked family for one test (removed afterwards)."""
    def add(base: str, **changes):
        family = dataclasses.replace(get_family(base), **changes)
        monkeypatch.setitem(FAMILIES, family.name, family)
        return family
    return add


def test_options_resolve_validate_and_reach_flags_recipes_and_card(with_family, tmp_path):
    from selfish_deploy.hub.card import train_command
    from selfish_deploy.training.cli import build_parser, resolve
    from selfish_deploy.training.config import TrainConfig

    with_family("lstm", name="lstm_knob", options=(Option("knob_width", 3, "a test knob"),
                                                   Option("knob_rate", 0.5, "another")))
    cfg = ModelConfig(arch="lstm_knob")
    assert cfg.options == {"knob_width": 3, "knob_rate": 0.5} and cfg.option("knob_width") == 3
    assert ModelConfig(arch="lstm_knob", options={"knob_rate": 1}).options["knob_rate"] == 1.0  # int -> float
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserError, match="knob_width must be int"):
        ModelConfig(arch="lstm_knob", options={"knob_width": 2.5})
    with pytest.raises(UserError, match="not known"):
        ModelConfig(arch="lstm", options={"knob_width": 2})
    # recipes set options as top-level keys; a stray one for another family is refused
    train = TrainConfig.from_dict({**TrainConfig().to_dict(), "arch": "lstm_knob", "knob_width": 7})
    assert train.options == {"knob_width": 7}
    with pytest.raises(UserError, match="--knob-width: not an option of --arch lstm"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "knob_width": 7})
    # flags, and back out as flags in the card's command
    args = build_parser().parse_args(["--arch", "lstm_knob", "--knob-rate", "0.25", "--out", str(tmp_path)])
    resolved, _ = resolve(args)
    assert resolved.options == {"knob_rate": 0.25}
    assert "--knob-rate 0.25" in train_command(resolved.to_dict())


def test_a_one_step_graph_is_looped_by_the_runner(with_family, make_run, tmp_path):
    """A cell without an ONNX operator exports one step; OnnxLM runs it per position (here the GRU's own
    builder used one step at a time, so the numbers are checkable against PyTorch)."""
    with_family("gru", name="gru_steps", onnx_one_step=True)
    run = make_run(arch="gru_steps", tie=False, density=0.4)
    export_run(run, tmp_path / "export", onnx=True)
    onnx = OnnxLM.load(tmp_path / "export", threads=1)
    assert onnx.one_step and onnx.session.get_inputs()[0].shape == ["batch", 1]
    tokens, state, ref, ref_state = pytorch_reference(run, T=6, B=2)
    logp, new = onnx.forward(tokens.t().numpy(), [s.numpy() for s in state])
    assert logp.shape == (2, 6, 37) and relerr(torch.from_numpy(logp), ref.transpose(0, 1)) < TOL
    for got, want in zip(new, ref_state, strict=True):
        assert relerr(torch.from_numpy(got), want) < TOL
    assert onnx.forward(np.zeros((2, 0), np.int64))[0].shape == (2, 0, 37)


def test_old_config_files_load_unchanged():
    old = {"arch": "lstm", "vocab_size": 50, "emb": 8, "hidden": 12, "layers": 2, "dropout": 0.5,
           "tie_weights": True}  # a model section written before the registry
    cfg = ModelConfig.from_dict(old)
    assert (cfg.decoder, cfg.experts, cfg.options) == ("softmax", 0, {})
    assert {k: cfg.to_dict()[k] for k in old} == old
    with pytest.raises(UserError, match="--experts 4 is for the mixture of softmaxes"):
        ModelConfig(experts=4)
    with pytest.raises(UserError, match="unknown arch 'nope'; choose from lstm"):
        ModelConfig(arch="nope")
    with pytest.raises(UserError, match="unknown decoder"):
        ModelConfig(decoder="nope")


def test_bundled_model_loads_unchanged_and_computes_as_before():
    """The bundled export's config.json predates the registry; its model is exactly the old RNNLM: embedding,
    one nn.LSTM per layer, the tied linear decoder, log-softmax (bit for bit)."""
    import torch.nn.functional as F

    path = REPO / "selfish_deploy" / "assets" / "ptb-lstm-sparse"
    raw = json.loads((path / "config.json").read_text())["model"]
    assert set(raw) == {"arch", "vocab_size", "emb", "hidden", "layers", "dropout", "tie_weights"}
    exported = load_export(path)
    cfg = exported.model_config
    assert (cfg.decoder, cfg.experts, cfg.options) == ("softmax", 0, {})
    weights = {n: (w.to_dense(torch.float32) if isinstance(w, CSR) else w.float())
               for n, w in [(n, exported.weight(n)) for n in [*exported.sparse, *exported.dense]]}
    model = build_model(cfg).eval()
    model.load_state_dict(weights, strict=False)  # the tied decoder.weight is encoder.weight
    assert set(dict(model.named_parameters())) == set(weights)
    tokens = torch.randint(0, cfg.vocab_size, (7, 2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, _ = model(tokens, model.init_hidden(2))
        x = F.embedding(tokens, weights["encoder.weight"])
        for k, (n_in, n_out) in enumerate(cfg.layer_sizes()):
            lstm = torch.nn.LSTM(n_in, n_out)
            lstm.load_state_dict({n: weights[f"rnns.{k}.{n}"] for n in dict(lstm.named_parameters())})
            x, _ = lstm(x)
        ref = torch.log_softmax(F.linear(x, weights["encoder.weight"], weights["decoder.bias"]), dim=-1)
    assert torch.equal(got, ref)


# --- no dispatch on family names outside families/ ----------------------------------------------------------

# The stacked cells' own math takes the cell name as an argument, as ONNX's LSTM/GRU/RNN operators do: the
# kernels (kernels/), the reference step equations (cells.py) and the runtime trunk (runtime/stacked.py) are
# that family's implementation.
IMPLEMENTATION = ("selfish_deploy/families/", "selfish_deploy/kernels/", "selfish_deploy/cells.py",
                  "selfish_deploy/runtime/stacked.py")


def _dispatch(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """Comparisons with a family's name (``arch == "lstm"``, ``cell in ("gru",)``) and tables keyed by two or
    more of them: what an ``if arch ==`` chain or an ``ARCH -> thing`` dict looks like. A default value
    (``arch: str = "lstm"``) or ``arch in FAMILIES`` (validation) is not dispatch."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literal = any(isinstance(o, ast.Constant) and o.value in names for o in operands)
            literal |= any(isinstance(o, (ast.Tuple, ast.List, ast.Set)) and
                           any(isinstance(e, ast.Constant) and e.value in names for e in o.elts) for o in operands)
            if literal:
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            if len([k for k in keys if k in names]) >= 2:
                found.append((node.lineno, ast.unparse(node)[:80]))
    return found


def test_no_family_dispatch_outside_families():
    names = set(FAMILIES)
    offenders = []
    for root in ("selfish_deploy", "training", "serving"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(IMPLEMENTATION):
                continue
            offenders += [f"{rel}:{line}: {code}" for line, code in _dispatch(ast.parse(path.read_text()), names)]
    assert not offenders, "dispatch on the family outside families/:\n" + "\n".join(offenders)


def test_the_dispatch_check_catches_dispatch():
    names = {"lstm", "gru"}
    assert _dispatch(ast.parse('if cfg.arch == "lstm": pass'), names)
    assert _dispatch(ast.parse('parts = 2 if cell in ("lstm",) else 1'), names)
    assert _dispatch(ast.parse('G = {"lstm": 4, "gru": 3}'), names)
    assert _dispatch(ast.parse('ok = "gru" != self.cell'), names)
    assert not _dispatch(ast.parse('arch: str = "lstm"\nf = get_family(arch or "lstm")\nok = arch in FAMILIES'),
                         names)
